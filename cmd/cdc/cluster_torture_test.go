package main

import (
	"math/rand/v2"
	"testing"
	"time"
)

// TestTortureCluster is TestTorture's cluster variant: the real daemon (a
// leader and a hot standby) against a two-replica ClickHouse cluster at the
// default insert_quorum (auto: 2 of 2), while producers commit and roll
// back transactions. Every step SIGKILLs a random live daemon and starts
// a new one; by turns it also
//
//   - SIGKILLs the replica a daemon is connected to together with that
//     daemon, and starts the replica again 1–5 s later;
//   - SIGKILLs ZooKeeper and starts it again 1–15 s later (past the
//     replicas' 10 s session timeout now and then).
//
// Afterwards every replica, synced, holds every committed row exactly once
// without FINAL (clusterRig.finish).
//
// CDC_TORTURE_CLUSTER_STEPS sets the number of steps: 6 by default (the
// short schedule CI runs, about two minutes), 40 for the long one.
func TestTortureCluster(t *testing.T) {
	steps := envInt("CDC_TORTURE_CLUSTER_STEPS", 6)
	r := newClusterRig(t, "torturecluster", 2, "CDC_BATCH_SIZE=500", "CDC_BATCH_FLUSH_INTERVAL=100ms")
	stop := r.produce(3, 50, 20*time.Millisecond)
	r.topUp(2) // a leader and a hot standby
	var kills, replicaKills, zkKills int
	for step := 1; step <= steps; step++ {
		time.Sleep(time.Duration(300+rand.IntN(2200)) * time.Millisecond)
		switch step % 3 {
		case 1:
			kills += r.killReplicaWithItsDaemon(time.Duration(1000+rand.IntN(4000)) * time.Millisecond)
			replicaKills++
		case 2:
			r.cl.KillZK(t)
			time.Sleep(time.Duration(1000+rand.IntN(14000)) * time.Millisecond)
			r.cl.StartZK(t)
			zkKills++
		}
		if live := r.live(); len(live) > 0 {
			live[rand.IntN(len(live))].kill()
			kills++
		}
		r.topUp(2)
	}
	stop()
	committed := r.finish()
	t.Logf("torture cluster: %d steps, %d cdc SIGKILLs, %d replica SIGKILLs, %d ZooKeeper SIGKILLs, %d daemons started, %d rows committed, %s",
		steps, kills, replicaKills, zkKills, len(r.procs), committed, time.Since(r.start).Round(time.Second))
}

// live returns the daemons still running.
func (r *clusterRig) live() []*daemonProc {
	var live []*daemonProc
	for _, p := range r.procs {
		if p.running() {
			live = append(live, p)
		}
	}
	return live
}

// topUp starts daemons until n run.
func (r *clusterRig) topUp(n int) {
	for running := len(r.live()); running < n; running++ {
		r.spawn()
	}
}

// killReplicaWithItsDaemon SIGKILLs a daemon connected to a replica (the
// leader: a standby holds no ClickHouse connection) and, at the same
// instant, that replica; new daemons start at once and the replica comes
// back after down. Without a connected daemon a random replica dies alone.
// It returns how many daemons it killed.
func (r *clusterRig) killReplicaWithItsDaemon(down time.Duration) int {
	victim, killed := 0, 0
	for _, p := range r.live() {
		if v := connectedReplica(r.t, p, r.cl.Addrs); v != 0 && victim == 0 {
			victim = v
			p.kill()
			killed++
		}
	}
	if victim == 0 {
		victim = 1 + rand.IntN(len(r.cl.Addrs))
	}
	r.cl.Kill(r.t, victim)
	r.topUp(2)
	time.Sleep(down)
	r.cl.Start(r.t, victim)
	return killed
}
