package deploy_test

import (
	"encoding/xml"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/types"
)

// chConfig is the part of a ClickHouse (or Keeper) XML configuration the
// cluster profile relies on.
type chConfig struct {
	ZooKeeper []struct {
		Host string `xml:"host"`
		Port int    `xml:"port"`
	} `xml:"zookeeper>node"`
	Macros struct {
		Shard   string `xml:"shard"`
		Replica string `xml:"replica"`
	} `xml:"macros"`
	InterserverHost string      `xml:"interserver_http_host"`
	RemoteServers   clusterList `xml:"remote_servers"`
	DDLPath         string      `xml:"distributed_ddl>path"`
	Keeper          struct {
		TCPPort  int `xml:"tcp_port"`
		ServerID int `xml:"server_id"`
		Raft     []struct {
			ID       int    `xml:"id"`
			Hostname string `xml:"hostname"`
		} `xml:"raft_configuration>server"`
	} `xml:"keeper_server"`
}

// clusterList is <remote_servers>: one element per cluster, named as the
// cluster.
type clusterList map[string][]clusterShard

type clusterShard struct {
	InternalReplication bool `xml:"internal_replication"`
	Replicas            []struct {
		Host     string `xml:"host"`
		Port     int    `xml:"port"`
		User     string `xml:"user"`
		Password string `xml:"password"`
	} `xml:"replica"`
}

func (l *clusterList) UnmarshalXML(d *xml.Decoder, start xml.StartElement) error {
	*l = clusterList{}
	for {
		tok, err := d.Token()
		if err != nil {
			return err
		}
		switch el := tok.(type) {
		case xml.StartElement:
			var c struct {
				Shards []clusterShard `xml:"shard"`
			}
			if err := d.DecodeElement(&c, &el); err != nil {
				return err
			}
			(*l)[el.Name.Local] = c.Shards
		case xml.EndElement:
			return nil
		}
	}
}

// mountedConfig merges the XML files service s mounts below dir (config.d
// files, or Keeper's single file) into one chConfig: later files fill what
// earlier ones left empty, as ClickHouse's own merge would.
func mountedConfig(t *testing.T, s types.ServiceConfig, dir string) (chConfig, []string) {
	t.Helper()
	var merged chConfig
	var files []string
	for target, src := range bindMounts(t, s) {
		if !strings.HasPrefix(target, dir) || !strings.HasSuffix(src, ".xml") {
			continue
		}
		files = append(files, src)
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		var c chConfig
		if err := xml.Unmarshal(b, &c); err != nil {
			t.Fatalf("service %s: %s: %v", s.Name, src, err)
		}
		merged.ZooKeeper = append(merged.ZooKeeper, c.ZooKeeper...)
		if c.Macros.Shard != "" || c.Macros.Replica != "" {
			merged.Macros = c.Macros
		}
		merged.InterserverHost = cmpOr(merged.InterserverHost, c.InterserverHost)
		merged.DDLPath = cmpOr(merged.DDLPath, c.DDLPath)
		if merged.RemoteServers == nil {
			merged.RemoteServers = c.RemoteServers
		}
		if c.Keeper.TCPPort != 0 {
			merged.Keeper = c.Keeper
		}
	}
	return merged, files
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// TestComposeClusterProfile checks docker-compose.yml's `cluster` profile
// without Docker (none runs here; the profile itself was never started):
// Keeper and the replicas mount configuration files that exist and parse,
// every replica reaches Keeper where it listens, has its own replica macro
// in one shard and names itself as interserver host, the cluster in
// <remote_servers> lists exactly the replica services, and the cluster
// pipeline's cdc configuration loads and names that cluster and every
// replica, with a slot of its own.
func TestComposeClusterProfile(t *testing.T) {
	p := loadCompose(t)
	services := p.AllServices()
	replicas := []string{"ch-r1", "ch-r2"}
	for _, name := range append([]string{"keeper", "migrate-cluster", "cdc-cluster"}, replicas...) {
		s, ok := services[name]
		if !ok {
			t.Fatalf("docker-compose.yml: no service %q", name)
		}
		if !slices.Equal(s.Profiles, []string{"cluster"}) {
			t.Errorf("service %s: profiles %v, want [cluster]", name, s.Profiles)
		}
	}
	keeper := services["keeper"]
	if m := imageMajor(t, keeper.Image, "clickhouse/clickhouse-keeper"); m < 24 {
		t.Errorf("keeper image %s: want 24 or newer", keeper.Image)
	}
	requireHealthcheck(t, keeper)
	kc, files := mountedConfig(t, keeper, "/etc/clickhouse-keeper/")
	if len(files) != 1 || kc.Keeper.TCPPort == 0 {
		t.Fatalf("keeper: want one mounted keeper_server configuration in /etc/clickhouse-keeper/, got %v", files)
	}
	if len(kc.Keeper.Raft) != 1 || kc.Keeper.Raft[0].ID != kc.Keeper.ServerID || kc.Keeper.Raft[0].Hostname != "keeper" {
		t.Errorf("keeper: raft_configuration %+v does not name this node (server_id %d, host keeper)", kc.Keeper.Raft, kc.Keeper.ServerID)
	}

	cdc := services["cdc-cluster"]
	checkComposeEnv(t, cdc.Name, cdc)
	cfg := loadComposeConfig(t, p, cdc)
	mainCfg := loadComposeConfig(t, p, services["cdc"])
	if cfg.Postgres.Slot == mainCfg.Postgres.Slot {
		t.Errorf("cdc-cluster uses the slot %q of cdc: one slot has one consumer", cfg.Postgres.Slot)
	}
	if cfg.ClickHouse.Cluster == "" {
		t.Fatal("cdc-cluster: clickhouse.cluster is not set")
	}
	var addrs []string
	for _, name := range replicas {
		addrs = append(addrs, name+":9000")
	}
	if !slices.Equal(cfg.ClickHouse.Addr, addrs) {
		t.Errorf("cdc-cluster: clickhouse.addr %v, want every replica %v", cfg.ClickHouse.Addr, addrs)
	}
	for _, name := range []string{"migrate-cluster", "cdc-cluster"} {
		s := services[name]
		checkComposeEnv(t, name, s)
		requireDependsOn(t, s, map[string]string{"ch-r1": types.ServiceConditionHealthy, "ch-r2": types.ServiceConditionHealthy})
		if got := loadComposeConfig(t, p, s); got.ClickHouse.Cluster != cfg.ClickHouse.Cluster || got.Postgres.Slot != cfg.Postgres.Slot {
			t.Errorf("%s: cluster %q slot %q, want those of cdc-cluster", name, got.ClickHouse.Cluster, got.Postgres.Slot)
		}
	}
	requireDependsOn(t, cdc, map[string]string{"migrate-cluster": types.ServiceConditionCompletedSuccessfully})

	seen := map[string]bool{}
	for _, name := range replicas {
		checkReplicaService(t, services[name], kc.Keeper.TCPPort, cfg.ClickHouse.Cluster, replicas, seen)
	}
}

// checkReplicaService checks one replica service of the cluster profile.
func checkReplicaService(t *testing.T, s types.ServiceConfig, keeperPort int, cluster string, replicas []string, seen map[string]bool) {
	t.Helper()
	if m := imageMajor(t, s.Image, "clickhouse/clickhouse-server"); m < 24 {
		t.Errorf("%s image %s: want 24 or newer", s.Name, s.Image)
	}
	requireHealthcheck(t, s)
	requireDependsOn(t, s, map[string]string{"keeper": types.ServiceConditionHealthy})
	c, files := mountedConfig(t, s, "/etc/clickhouse-server/config.d/")
	if len(files) == 0 {
		t.Fatalf("%s mounts no configuration in /etc/clickhouse-server/config.d/", s.Name)
	}
	if len(c.ZooKeeper) != 1 || c.ZooKeeper[0].Host != "keeper" || c.ZooKeeper[0].Port != keeperPort {
		t.Errorf("%s: <zookeeper> %+v, want keeper:%d", s.Name, c.ZooKeeper, keeperPort)
	}
	if c.Macros.Shard == "" || c.Macros.Replica == "" {
		t.Errorf("%s: macros %+v lack shard or replica", s.Name, c.Macros)
	}
	key := c.Macros.Shard + "/" + c.Macros.Replica
	if seen[key] {
		t.Errorf("%s: macros shard %s replica %s are another replica's too", s.Name, c.Macros.Shard, c.Macros.Replica)
	}
	seen[key] = true
	if c.InterserverHost != s.Name || (s.Hostname != "" && s.Hostname != s.Name) {
		t.Errorf("%s: interserver_http_host %q (hostname %q): the other replicas fetch parts from it by its service name", s.Name, c.InterserverHost, s.Hostname)
	}
	if c.DDLPath == "" {
		t.Errorf("%s: no <distributed_ddl><path>: ON CLUSTER statements (cdc migrate) would fail", s.Name)
	}
	shards, ok := c.RemoteServers[cluster]
	if !ok || len(shards) != 1 {
		t.Fatalf("%s: <remote_servers> has %d shards of cluster %q (clickhouse.cluster), want 1", s.Name, len(shards), cluster)
	}
	var hosts []string
	env := s.Environment
	for _, r := range shards[0].Replicas {
		hosts = append(hosts, r.Host)
		if r.Port != 9000 {
			t.Errorf("%s: replica %s on port %d, want 9000", s.Name, r.Host, r.Port)
		}
		if env["CLICKHOUSE_USER"] == nil || r.User != *env["CLICKHOUSE_USER"] || env["CLICKHOUSE_PASSWORD"] == nil || r.Password != *env["CLICKHOUSE_PASSWORD"] {
			t.Errorf("%s: replica %s logs in as %q, the image creates %v", s.Name, r.Host, r.User, fmt.Sprint(env["CLICKHOUSE_USER"]))
		}
	}
	if !slices.Equal(hosts, replicas) || !shards[0].InternalReplication {
		t.Errorf("%s: cluster %s lists replicas %v (internal_replication %v), want %v with internal_replication", s.Name, cluster, hosts, shards[0].InternalReplication, replicas)
	}
}
