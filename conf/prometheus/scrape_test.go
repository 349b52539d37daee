package prometheus

import (
	"context"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/promql/promqltest"
	"github.com/prometheus/prometheus/rules"
)

// TestScrapedAlerts evaluates the rules over a real wgcnid's metrics: the
// text exposition in $WGCNI_SCRAPE (written by tests/heal from a node in
// the namespace cluster), every sample held for 10 minutes as the
// scrape's instance "scraped". The alerts named in $WGCNI_SCRAPE_FIRING
// (comma-separated) must fire; the firing ones are printed. Without
// $WGCNI_SCRAPE there is nothing to evaluate: tests/heal runs it.
func TestScrapedAlerts(t *testing.T) {
	path := os.Getenv("WGCNI_SCRAPE")
	if path == "" {
		t.Skip("WGCNI_SCRAPE not set: run by tests/heal with a node's metrics")
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	const steps = 20 // 10 minutes at 30 s
	var series strings.Builder
	for _, name := range slices.Sorted(maps.Keys(fams)) {
		if !strings.HasPrefix(name, "wgcni_") {
			continue
		}
		for _, m := range fams[name].GetMetric() {
			lv := []string{`instance="scraped"`}
			for _, l := range m.GetLabel() {
				lv = append(lv, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			fmt.Fprintf(&series, "%s{%s} %gx%d\n", name, strings.Join(lv, ","), value(m), steps)
		}
	}
	alerting, interval := loadRules(t)
	st := promqltest.LoadedStorage(t, "load 30s\n"+indent(series.String()))
	engine := promqltest.NewTestEngine(t, false, 0, promqltest.DefaultMaxSamplesPerQuery)
	query := rules.EngineQueryFunc(engine, st)
	start := time.Unix(0, 0).UTC()
	for ts := time.Duration(0); ts <= steps*interval; ts += interval {
		for _, r := range alerting {
			if _, err := r.Eval(context.Background(), 0, start.Add(ts), query, nil, 0); err != nil {
				t.Fatalf("%s at %s: %v", r.Name(), ts, err)
			}
		}
	}
	got := firing(alerting)
	t.Logf("firing: %s", strings.Join(got, " "))
	for _, want := range strings.Split(os.Getenv("WGCNI_SCRAPE_FIRING"), ",") {
		if want == "" {
			continue
		}
		if !slices.ContainsFunc(got, func(g string) bool { return strings.HasPrefix(g, want+"{") }) {
			t.Errorf("%s does not fire over the scraped metrics", want)
		}
	}
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Untyped != nil:
		return m.Untyped.GetValue()
	}
	return 0
}
