package deploy_test

import (
	"context"
	"os/exec"
	"testing"
	"time"
)

// The alert rules behave as their texts say: `promtool test rules` runs
// deploy/prometheus/alerts_test.yml, where every alert fires for the shard
// in trouble and stays silent for the healthy one and when all is well, and
// where one of two shards disappearing fires CDCNoLeader for that shard
// alone (a global absent() would stay silent). promtool comes from Debian's
// prometheus package, which scripts/testenv.sh up installs; without it the
// test fails rather than skips, so CI cannot pass untested rules.
func TestAlertRulesUnderPromtool(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatalf("promtool not found (%v): run scripts/testenv.sh up, or apt-get install prometheus", err)
	}
	dir := repoPath("deploy", "prometheus")
	for _, args := range [][]string{
		{"check", "rules", "alerts.yml"},
		{"test", "rules", "alerts_test.yml"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		cmd := exec.CommandContext(ctx, promtool, args...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		cancel()
		if err != nil {
			t.Errorf("promtool %v: %v\n%s", args, err, out)
		}
	}
}

// Every alert of alerts.yml has a case in alerts_test.yml where it fires
// and one where it must not: a new alert without cases fails here.
func TestEveryAlertHasPromtoolCases(t *testing.T) {
	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert string `yaml:"alert"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	decodeYAML(t, repoPath("deploy", "prometheus", "alerts.yml"), &rules)
	var tests struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string `yaml:"alertname"`
				ExpAlerts []any  `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	decodeYAML(t, repoPath("deploy", "prometheus", "alerts_test.yml"), &tests)
	fires, silent := map[string]bool{}, map[string]bool{}
	for _, tc := range tests.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			} else {
				silent[a.Alertname] = true
			}
		}
	}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			if !fires[r.Alert] {
				t.Errorf("alerts_test.yml: no case where %s fires", r.Alert)
			}
			if !silent[r.Alert] {
				t.Errorf("alerts_test.yml: no case where %s stays silent", r.Alert)
			}
		}
	}
}
