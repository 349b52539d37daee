package gateway

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/wgcni/wgcni/daemon/record"
)

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func advert(node, rec, ep string, sites ...string) Advert {
	a := Advert{Record: pfx(rec), CIDRs: []netip.Prefix{pfx(rec)}, Node: node, Endpoint: netip.MustParseAddr(ep)}
	for _, s := range sites {
		a.Sites = append(a.Sites, pfx(s))
	}
	return a
}

func cand(site, node, rec string, created int64) Candidate {
	return Candidate{Site: pfx(site), Node: node, Record: pfx(rec), Key: node + "/" + site, Created: created}
}

func TestResolve(t *testing.T) {
	cluster, _ := record.NewCluster("10.244.0.0/16", 24)
	g1 := advert("g1", "10.244.1.0/24", "10.99.0.1", "192.168.77.0/24")
	g2 := advert("g2", "10.244.2.0/24", "10.99.0.2", "192.168.77.0/24")
	n3 := advert("n3", "10.244.3.0/24", "10.99.0.3")
	for _, tc := range []struct {
		name    string
		adverts []Advert
		cands   []Candidate
		usable  func(Candidate) bool
		serving map[string]string // site -> node ("" none)
		refused []string          // substrings of the refusals, in order
	}{
		{name: "oldest candidate serves", adverts: []Advert{g1, g2, n3},
			cands:   []Candidate{cand("192.168.77.0/24", "g2", "10.244.2.0/24", 9), cand("192.168.77.0/24", "g1", "10.244.1.0/24", 5)},
			serving: map[string]string{"192.168.77.0/24": "g1"}},
		{name: "a returning gateway queues behind the incumbent", adverts: []Advert{g1, g2},
			cands:   []Candidate{cand("192.168.77.0/24", "g2", "10.244.2.0/24", 9), cand("192.168.77.0/24", "g1", "10.244.1.0/24", 12)},
			serving: map[string]string{"192.168.77.0/24": "g2"}},
		{name: "no candidate: advertised but dropped", adverts: []Advert{g1, g2},
			serving: map[string]string{"192.168.77.0/24": ""}},
		{name: "a candidate whose record does not advertise the site is ignored", adverts: []Advert{g1, n3},
			cands:   []Candidate{cand("192.168.77.0/24", "n3", "10.244.3.0/24", 1), cand("192.168.77.0/24", "g1", "10.244.1.0/24", 2)},
			serving: map[string]string{"192.168.77.0/24": "g1"}},
		{name: "a candidate naming another node's record is ignored", adverts: []Advert{g1, g2},
			cands:   []Candidate{cand("192.168.77.0/24", "g2", "10.244.1.0/24", 1)},
			serving: map[string]string{"192.168.77.0/24": ""}},
		{name: "unusable candidate (dead tunnel) skipped", adverts: []Advert{g1, g2},
			cands:   []Candidate{cand("192.168.77.0/24", "g1", "10.244.1.0/24", 1), cand("192.168.77.0/24", "g2", "10.244.2.0/24", 2)},
			usable:  func(c Candidate) bool { return c.Node != "g1" },
			serving: map[string]string{"192.168.77.0/24": "g2"}},
		{name: "every candidate unusable: dropped", adverts: []Advert{g1, g2},
			cands:   []Candidate{cand("192.168.77.0/24", "g1", "10.244.1.0/24", 1), cand("192.168.77.0/24", "g2", "10.244.2.0/24", 2)},
			usable:  func(Candidate) bool { return false },
			serving: map[string]string{"192.168.77.0/24": ""}},
		{name: "overlapping site of another gateway refused, naming both", adverts: []Advert{g1, advert("g4", "10.244.4.0/24", "10.99.0.4", "192.168.0.0/16", "172.16.0.0/24")},
			cands:   []Candidate{cand("192.168.0.0/16", "g4", "10.244.4.0/24", 1), cand("172.16.0.0/24", "g4", "10.244.4.0/24", 2)},
			serving: map[string]string{"192.168.77.0/24": "", "172.16.0.0/24": "g4"},
			refused: []string{"site CIDR 192.168.0.0/16 of node g4 overlaps site CIDR 192.168.77.0/24 advertised by node g1"}},
		{name: "site inside a node's PodCIDR refused, naming the node", adverts: []Advert{n3, advert("g5", "10.244.5.0/24", "10.99.0.5", "10.244.3.128/25")},
			serving: map[string]string{},
			refused: []string{"site CIDR 10.244.3.128/25 of node g5 overlaps 10.244.3.0/24 of node n3 (inside cluster CIDR 10.244.0.0/16)"}},
		{name: "site inside the cluster CIDR, no one's", adverts: []Advert{advert("g5", "10.244.5.0/24", "10.99.0.5", "10.244.200.0/24")},
			serving: map[string]string{},
			refused: []string{"site CIDR 10.244.200.0/24 of node g5 overlaps cluster CIDR 10.244.0.0/16"}},
		{name: "site holding a node's endpoint refused", adverts: []Advert{n3, advert("g6", "10.244.6.0/24", "10.99.0.6", "10.99.0.0/24")},
			serving: map[string]string{},
			refused: []string{"site CIDR 10.99.0.0/24 of node g6 contains the endpoint 10.99.0.3 of node n3"}},
		{name: "equal CIDRs are one site with two gateways", adverts: []Advert{g2, g1},
			cands:   []Candidate{cand("192.168.77.0/24", "g1", "10.244.1.0/24", 3)},
			serving: map[string]string{"192.168.77.0/24": "g1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := Resolve(cluster, tc.adverts, tc.cands, tc.usable)
			got := map[string]string{}
			for s, site := range v.Sites {
				got[s.String()] = ""
				if site.Serving != nil {
					got[s.String()] = site.Serving.Node
				}
			}
			if len(got) != len(tc.serving) {
				t.Fatalf("sites %v, want %v", got, tc.serving)
			}
			for s, n := range tc.serving {
				if g, ok := got[s]; !ok || g != n {
					t.Fatalf("sites %v, want %v", got, tc.serving)
				}
			}
			if len(v.Refused) != len(tc.refused) {
				t.Fatalf("refused %v, want %v", v.Refused, tc.refused)
			}
			for i, r := range v.Refused {
				if !strings.Contains(r.Err.Error(), tc.refused[i]) {
					t.Fatalf("refusal %q, want it to say %q", r.Err, tc.refused[i])
				}
			}
		})
	}
}

func TestRefusedErrorUnwraps(t *testing.T) {
	inner := errors.New("x")
	if err := error(&RefusedError{Err: inner}); !errors.Is(err, inner) || !strings.HasPrefix(err.Error(), "--advertise-cidrs refused") {
		t.Fatal(err)
	}
}

// A node that skips the elected gateway says which, why and whom it uses.
func TestSubstituteReason(t *testing.T) {
	c1, c2, c3 := cand("192.168.77.0/24", "g1", "10.244.1.0/24", 1), cand("192.168.77.0/24", "g2", "10.244.2.0/24", 2),
		cand("192.168.77.0/24", "g3", "10.244.3.0/24", 3)
	o := &Observer{Why: func(c Candidate) string {
		if c.Node == "g3" {
			return ""
		}
		return "tunnel one-way"
	}}
	for _, tc := range []struct {
		serving         *Candidate
		elected, reason string
	}{
		{&c1, "", ""},
		{&c3, "g1", "elected g1: tunnel one-way, g2: tunnel one-way → g3"},
		{nil, "g1", "elected g1: tunnel one-way, g2: tunnel one-way, g3: unusable → none (dropped)"},
	} {
		e, r := o.substitute(&Site{Candidates: []Candidate{c1, c2, c3}, Serving: tc.serving})
		if e != tc.elected || r != tc.reason {
			t.Errorf("serving %v: %q %q, want %q %q", tc.serving, e, r, tc.elected, tc.reason)
		}
	}
}
