package ctl

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/wgcni/wgcni/daemon/config"
	"github.com/wgcni/wgcni/daemon/etcdutil"
	"github.com/wgcni/wgcni/daemon/gateway"
	"github.com/wgcni/wgcni/daemon/record"
)

// GatewaysReport is `wgcnictl gateways`: every site CIDR advertised in
// etcd, the gateway serving it and the candidates queued behind it, as
// the daemons decide it (gateway.Resolve over the same records and
// election keys); refused advertisements with the reason.
type GatewaysReport struct {
	Sites   []SiteReport `json:"sites"`
	Refused []string     `json:"refused"`
}

// SiteReport is one site.
type SiteReport struct {
	Site        string   `json:"site"`
	Gateway     string   `json:"gateway"` // serving node; "" none: the site's traffic is dropped
	Candidates  []string `json:"candidates"`
	Advertisers []string `json:"advertisers"`
}

// Gateways gathers `wgcnictl gateways`.
func Gateways(ctx context.Context, cfg *config.Config) (*GatewaysReport, error) {
	recs, cli, err := listRecords(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	lctx, cancel := context.WithTimeout(ctx, etcdTimeout)
	defer cancel()
	kvs, _, err := etcdutil.List(lctx, cli, record.ElectionsPrefix(cfg.EtcdPrefix))
	if err != nil {
		return nil, fmt.Errorf("list %s in etcd: %w", record.ElectionsPrefix(cfg.EtcdPrefix), err)
	}
	var cands []gateway.Candidate
	for _, kv := range kvs {
		if c, err := gateway.DecodeCandidate(cfg.EtcdPrefix, kv); err == nil {
			cands = append(cands, c)
		}
	}
	// Oldest record first, as the daemons order adverts.
	slices.SortFunc(recs, func(a, b etcdRecord) int { return int(a.created - b.created) })
	var adverts []gateway.Advert
	for _, r := range recs {
		adverts = append(adverts, gateway.AdvertOf(r.lease.Primary(), r.lease))
	}
	v := gateway.Resolve(cfg.Cluster, adverts, cands, nil)
	rep := &GatewaysReport{Sites: []SiteReport{}, Refused: []string{}}
	for _, s := range v.Sorted() {
		sr := SiteReport{Site: s.CIDR.String(), Advertisers: s.Advertisers, Candidates: []string{}}
		for _, c := range s.Candidates {
			sr.Candidates = append(sr.Candidates, c.Node)
		}
		if s.Serving != nil {
			sr.Gateway = s.Serving.Node
		}
		rep.Sites = append(rep.Sites, sr)
	}
	for _, r := range v.Refused {
		rep.Refused = append(rep.Refused, r.Err.Error())
	}
	return rep, nil
}

func (r *GatewaysReport) table(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SITE\tGATEWAY\tCANDIDATES\tADVERTISED BY")
	for _, s := range r.Sites {
		gw := s.Gateway
		if gw == "" {
			gw = "none (dropped)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", s.Site, gw, dash(strings.Join(s.Candidates, ",")), strings.Join(s.Advertisers, ","))
	}
	tw.Flush()
	for _, e := range r.Refused {
		fmt.Fprintf(w, "refused: %s\n", e)
	}
}
