package gateway

import (
	"github.com/prometheus/client_golang/prometheus"
)

var (
	descSite = prometheus.NewDesc("wgcni_gateway_site_info",
		"Site CIDRs reached through gateways (always 1), with the node serving each as this node sees it (gateway=\"\": none, the site's traffic is dropped) and whether this node advertises it.",
		[]string{"site", "gateway", "own"}, nil)
	descCandidates = prometheus.NewDesc("wgcni_gateway_site_candidates",
		"Live gateway candidates of a site (its election's keys of nodes advertising it).", []string{"site"}, nil)
	descFailovers = prometheus.NewDesc("wgcni_gateway_failovers_total",
		"Times a site's serving gateway went away and the site moved to another gateway or to none, as this node applied it.", []string{"site"}, nil)
	descServing = prometheus.NewDesc("wgcni_gateway_serving",
		"1 for each site this node serves as the gateway.", []string{"site"}, nil)
	descRefused = prometheus.NewDesc("wgcni_gateway_refused_adverts",
		"Advertised site CIDRs refused (overlapping the cluster, a node's address or another site).", nil, nil)
)

// Collector reports the observer's view of the sites.
type Collector struct{ O *Observer }

// Describe implements prometheus.Collector.
func (c Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descSite, descCandidates, descFailovers, descServing, descRefused} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c Collector) Collect(ch chan<- prometheus.Metric) {
	sites, refused := c.O.Status()
	for _, s := range sites {
		site := s.CIDR.String()
		own := "false"
		if s.Own {
			own = "true"
		}
		ch <- prometheus.MustNewConstMetric(descSite, prometheus.GaugeValue, 1, site, s.Gateway, own)
		ch <- prometheus.MustNewConstMetric(descCandidates, prometheus.GaugeValue, float64(s.Candidates), site)
		ch <- prometheus.MustNewConstMetric(descFailovers, prometheus.CounterValue, float64(s.Failovers), site)
		if s.Serving {
			ch <- prometheus.MustNewConstMetric(descServing, prometheus.GaugeValue, 1, site)
		}
	}
	ch <- prometheus.MustNewConstMetric(descRefused, prometheus.GaugeValue, float64(refused))
}
