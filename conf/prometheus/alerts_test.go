// Package prometheus holds wgcni's Prometheus alert rules and their test.
// It is a module of its own so that Prometheus' rule engine, which the test
// runs, stays out of the main module's dependencies.
package prometheus

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/common/promslog"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/promql/promqltest"
	"github.com/prometheus/prometheus/rules"
)

const rulesFile = "wgcni-alerts.yaml"

// loadRules parses the rule file exactly as Prometheus does at start-up
// (unknown fields refused, every expression and template checked) and
// builds the alerting rules.
func loadRules(t *testing.T) ([]*rules.AlertingRule, time.Duration) {
	t.Helper()
	p := parser.NewParser(parser.Options{})
	groups, errs := rulefmt.ParseFile(rulesFile, false, model.UTF8Validation, p, promslog.NewNopLogger())
	if len(errs) > 0 {
		t.Fatalf("%s does not load: %v", rulesFile, errs)
	}
	if len(groups.Groups) != 1 {
		t.Fatalf("%d rule groups, want 1", len(groups.Groups))
	}
	g := groups.Groups[0]
	var out []*rules.AlertingRule
	for _, r := range g.Rules {
		if r.Alert == "" {
			t.Fatalf("rule %q is not an alert", r.Record)
		}
		expr, err := p.ParseExpr(r.Expr)
		if err != nil {
			t.Fatalf("%s: %v", r.Alert, err)
		}
		out = append(out, rules.NewAlertingRule(r.Alert, expr, time.Duration(r.For), time.Duration(r.KeepFiringFor),
			labels.FromMap(r.Labels), labels.FromMap(r.Annotations), labels.EmptyLabels(), "", true, promslog.NewNopLogger()))
	}
	return out, time.Duration(g.Interval)
}

// check lists, at a time after the series start, every firing alert as
// "Alertname{label=value,...}" over the labels the alert keeps.
type check struct {
	at     time.Duration
	firing []string
}

func peerState(instance, peer, state string, values string) string {
	return fmt.Sprintf("wgcni_peer_state{instance=%q,peer_node=%q,peer_cidr=\"10.0.%s.0/24\",state=%q} %s\n",
		instance, peer, peer[1:], state, values)
}

func TestAlerts(t *testing.T) {
	alerting, interval := loadRules(t)
	covered := map[string]bool{}
	for _, c := range []struct {
		name   string
		series string // promqltest "load 30s" body
		checks []check
	}{
		{
			name: "unrepairable peer: no-handshake fires after 3m, not before",
			series: peerState("n1", "n3", "no-handshake", "1x40") + peerState("n1", "n3", "up", "0x40") +
				peerState("n1", "n2", "up", "1x40") + peerState("n1", "n2", "no-handshake", "0x40"),
			checks: []check{
				{at: 2*time.Minute + 30*time.Second},
				{at: 3*time.Minute + 30*time.Second, firing: []string{`WgcniPeerNoHandshake{instance=n1,peer_cidr=10.0.3.0/24,peer_node=n3,severity=warning}`}},
			},
		},
		{
			name:   "a two-minute blip does not fire",
			series: peerState("n1", "n3", "no-handshake", "1x4 0x30") + peerState("n1", "n3", "up", "0x4 1x30"),
			checks: []check{{at: 10 * time.Minute}},
		},
		{
			name: "stale and one-way",
			series: peerState("n1", "n2", "stale", "1x20") + peerState("n1", "n3", "one-way", "1x20") +
				peerState("n1", "n4", "up", "1x20"),
			checks: []check{{at: 4 * time.Minute, firing: []string{
				`WgcniPeerOneWay{instance=n1,peer_cidr=10.0.3.0/24,peer_node=n3,severity=warning}`,
				`WgcniPeerStale{instance=n1,peer_cidr=10.0.2.0/24,peer_node=n2,severity=warning}`,
			}}},
		},
		{
			name: "a node that reaches no peer is isolated (critical) before the per-peer alerts",
			series: peerState("n1", "n2", "no-handshake", "1x20") + peerState("n1", "n2", "up", "0x20") +
				peerState("n1", "n3", "stale", "1x20") + peerState("n1", "n3", "up", "0x20") +
				peerState("n2", "n3", "up", "1x20"),
			checks: []check{
				{at: 2*time.Minute + 30*time.Second, firing: []string{`WgcniNodeIsolated{instance=n1,severity=critical}`}},
			},
		},
		{
			name: "repairs that do not stick (a dead peer's quiesced attempts are not a repair loop)",
			series: `wgcni_peer_repairs_total{instance="n1",peer_node="n2",kind="reinitiate"} 0+1x40
wgcni_peer_repairs_total{instance="n1",peer_node="n3",kind="reapply-config"} 0 1 2 3 3x36
wgcni_peer_repairs_total{instance="n1",peer_node="n4",kind="quiesce-retries"} 0+1x40
`,
			checks: []check{{at: 15 * time.Minute, firing: []string{`WgcniPeerRepairLoop{instance=n1,peer_node=n2,severity=warning}`}}},
		},
		{
			name: "a path narrower than the device is reported, an equal one is not",
			series: `wgcni_peer_path_mtu_bytes{instance="n1",peer_node="n2",peer_cidr="10.0.2.0/24"} 1328x70
wgcni_peer_path_mtu_bytes{instance="n1",peer_node="n3",peer_cidr="10.0.3.0/24"} 1440x70
wgcni_device_mtu_bytes{instance="n1",device="wgcni0"} 1440x70
`,
			checks: []check{
				{at: 29 * time.Minute},
				{at: 31 * time.Minute, firing: []string{`WgcniPathMTUReduced{instance=n1,peer_cidr=10.0.2.0/24,peer_node=n2,severity=info}`}},
			},
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			// Fresh rules per case: an alert's pending state is per rule.
			alerting, _ := loadRules(t)
			st := promqltest.LoadedStorage(t, "load 30s\n"+indent(c.series))
			engine := promqltest.NewTestEngine(t, false, 0, promqltest.DefaultMaxSamplesPerQuery)
			query := rules.EngineQueryFunc(engine, st)
			start := time.Unix(0, 0).UTC()
			var ts time.Duration
			for _, ck := range c.checks {
				for ; ts <= ck.at; ts += interval {
					for _, r := range alerting {
						if _, err := r.Eval(context.Background(), 0, start.Add(ts), query, nil, 0); err != nil {
							t.Fatalf("%s at %s: %v", r.Name(), ts, err)
						}
					}
				}
				got := firing(alerting)
				for _, f := range got {
					covered[f[:strings.IndexByte(f, '{')]] = true
				}
				if !slices.Equal(got, ck.firing) {
					t.Fatalf("at %s firing:\n  %s\nwant:\n  %s", ck.at, strings.Join(got, "\n  "), strings.Join(ck.firing, "\n  "))
				}
			}
		})
	}
	for _, r := range alerting {
		if !covered[r.Name()] {
			t.Errorf("alert %s never fired in any case: add one", r.Name())
		}
	}
}

func firing(rs []*rules.AlertingRule) []string {
	var out []string
	for _, r := range rs {
		for _, a := range r.ActiveAlerts() {
			if a.State != rules.StateFiring {
				continue
			}
			m := a.Labels.Map()
			delete(m, "alertname")
			var kv []string
			for _, k := range slices.Sorted(maps.Keys(m)) {
				kv = append(kv, k+"="+m[k])
			}
			out = append(out, r.Name()+"{"+strings.Join(kv, ",")+"}")
		}
	}
	sort.Strings(out)
	return out
}

func indent(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimSpace(s), "\n") {
		b.WriteString("  " + l + "\n")
	}
	return b.String()
}
