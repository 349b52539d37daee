package mesh

import (
	"context"
	"net/netip"
	"slices"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/heal"
	"github.com/wgcni/wgcni/daemon/liveness"
	"github.com/wgcni/wgcni/daemon/record"
	"github.com/wgcni/wgcni/daemon/wgdev"
)

// The reconciler's side of self-healing (docs/self-healing.md): on each
// liveness tick it reads the device once, lets cfg.Heal judge every
// applied peer and runs the repairs it asks for, through the same apply
// path as etcd events. Nothing here touches the strict route: a peer that
// cannot be repaired stays unreachable, never routed around the tunnel.

// want is what heal compares the device's entry with.
func (p Peer) want() heal.Want {
	var allowed []netip.Prefix
	for _, a := range p.allowed() {
		ones, _ := a.Mask.Size()
		ip, _ := netip.AddrFromSlice(a.IP)
		allowed = append(allowed, netip.PrefixFrom(ip.Unmap(), ones))
	}
	return heal.Want{Key: p.PublicKey, Node: p.Node, CIDR: p.primary(), Endpoint: p.Endpoint, AllowedIPs: allowed,
		Keepalive: p.Keepalive, Probe: p.probeAddr()}
}

// probeAddr is where heal probes the peer: its gateway, through the
// tunnel. None while the peer is held (required mode, no PSK yet) and the
// tunnel does not carry that address (it does with NAT, exchangePrefixes):
// the probe would be dropped by design, and a lost probe reads as a fault
// and gets "repaired".
func (p Peer) probeAddr() netip.Addr {
	a := heal.ProbeAddr(p.primary())
	if p.Held && !slices.Contains(p.exchangePrefixes(), netip.PrefixFrom(a, a.BitLen())) {
		return netip.Addr{}
	}
	return a
}

// healTick runs one liveness round.
func (r *Reconciler) healTick(now time.Time) {
	if r.cfg.Heal == nil || r.deviceLost {
		return
	}
	dev, err := r.cfg.WG.Device(r.cfg.Device)
	if err != nil {
		return // a lost device is device.go's business
	}
	wants := make([]heal.Want, 0, len(r.applied))
	byKey := make(map[wgtypes.Key]netip.Prefix, len(r.applied))
	for c, p := range r.applied {
		wants = append(wants, p.want())
		byKey[p.PublicKey] = c
	}
	res := r.cfg.Heal.Observe(now, dev.Peers, wants)
	initiate := map[wgtypes.Key]time.Duration{}
	for _, rep := range res.Repairs {
		r.repair(rep, byKey[rep.Key], initiate)
	}
	// One configuration round for every re-initiation of this tick.
	if err := wgdev.Initiate(r.cfg.WG, r.cfg.Device, initiate); err != nil {
		r.Stats.ApplyErrors.Add(1)
		r.cfg.Log.Warn("repair failed; retried with backoff", "repair", liveness.Reinitiate, "peers", len(initiate), "err", err)
	}
	r.flushRereads(now)
	for k, mtu := range res.RouteMTU {
		if c, ok := byKey[k]; ok {
			r.setPathMTU(c, k, mtu)
		}
	}
}

// repair runs one repair heal asked for; re-initiations are collected in
// initiate (peer key: its keepalive) and re-reads in r.rereadWant.
func (r *Reconciler) repair(rep heal.Repair, cidr netip.Prefix, initiate map[wgtypes.Key]time.Duration) {
	log := r.cfg.Log.With("repair", rep.Kind, "public_key", rep.Key.String())
	if rep.Stray {
		if err := r.execute(Plan{Peers: []wgtypes.PeerConfig{{PublicKey: rep.Key, Remove: true}}}); err != nil {
			log.Warn("remove stray device entry", "err", err)
		}
		return
	}
	p, ok := r.applied[cidr]
	if !ok {
		return
	}
	var err error
	switch rep.Kind {
	case liveness.Reapply:
		// The entry and the routes as applied: one configuration call
		// (ReplaceAllowedIPs takes them back from any other entry).
		err = r.execute(Plan{Peers: []wgtypes.PeerConfig{p.config()}, RouteAdd: p.routes(r.cfg.LinkIndex, r.cfg.Gateways)})
	case liveness.ReReadEndpoint:
		if r.rereadWant == nil {
			r.rereadWant = map[netip.Prefix]bool{}
		}
		r.rereadWant[cidr] = true
	case liveness.Reinitiate:
		initiate[p.PublicKey] = time.Duration(p.Keepalive) * time.Second
	case liveness.BreakCrossed:
		if !p.initiatesAfterBreak(r.cfg.SelfKey) {
			log.Info("data does not flow on the session: the peer re-creates its entry and initiates; waiting for it", "peer_node", p.Node)
			return
		}
		err = r.recreatePeer(p)
	case liveness.Quiesce:
		err = r.recreateEntry(p)
	}
	if err != nil {
		r.Stats.ApplyErrors.Add(1)
		log.Warn("repair failed; retried with backoff", "peer_node", p.Node, "err", err)
	}
}

// initiatesAfterBreak reports whether this end is the one that re-creates
// its entry and initiates on BreakCrossed; both ends decide alike without
// talking. Between a NATed node and a reachable one only the NATed end
// can: the reachable end knows the NATed peer's endpoint only from
// WireGuard's roaming, which re-creating the entry forgets (its configured
// endpoint is left invalid), so it could not initiate, and the NATed end
// would wait for it until WireGuard's own retry. Otherwise the lower key.
func (p Peer) initiatesAfterBreak(self wgtypes.Key) bool {
	if p.SelfUnreachable != p.Unreachable {
		return p.SelfUnreachable
	}
	return liveness.Initiates(self, p.PublicKey)
}

// rereadEvery bounds how often records are re-read from etcd however many
// peers are stuck: one Get for one peer, one listing for several, so a
// thousand unreachable nodes cost one request per period, not a thousand.
const rereadEvery = 10 * time.Second

// reread is one re-read's outcome for the loop.
type reread struct {
	cidrs map[netip.Prefix]bool
	resp  *clientv3.GetResponse // nil: failed
}

// flushRereads starts the re-read of the records heal asked for, unless
// one is running or the last was too recent.
func (r *Reconciler) flushRereads(now time.Time) {
	if len(r.rereadWant) == 0 || r.rereading || now.Sub(r.rereadAt) < rereadEvery {
		return
	}
	want := r.rereadWant
	r.rereadWant, r.rereading, r.rereadAt = nil, true, now
	key, opts := record.SubnetsPrefix(r.cfg.Prefix), []clientv3.OpOption{clientv3.WithPrefix()}
	if len(want) == 1 {
		for c := range want {
			key, opts = record.SubnetKey(r.cfg.Prefix, c), nil
		}
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := r.cfg.Client.Get(ctx, key, opts...)
		if err != nil {
			r.cfg.Log.Warn("re-read peer records from etcd", "peers", len(want), "err", err)
			resp = nil
		}
		r.rereads <- reread{cidrs: want, resp: resp}
	}()
}

// rereadDone applies each re-read record that differs from what the watch
// delivered, when the read is not older than the watch's position.
func (r *Reconciler) rereadDone(rr reread, watched int64) {
	r.rereading = false
	if rr.resp == nil || rr.resp.Header.Revision < watched {
		return // failed, or the watch is ahead of the read
	}
	for _, kv := range rr.resp.Kvs {
		cidr, err := record.ParsePeerKey(r.cfg.Prefix, string(kv.Key), r.cfg.Cluster)
		if err != nil || !rr.cidrs[cidr] {
			continue
		}
		l, err := r.decode(string(kv.Key), kv.Value)
		if have, ok := r.records[cidr]; err == nil && ok && have.Endpoint == l.Endpoint && have.PublicKey == l.PublicKey {
			continue
		}
		// A record that is gone comes as the watch's delete event.
		r.cfg.Log.Warn("re-read peer record differs from what the watch delivered; applying it", "cidr", cidr, "rev", kv.ModRevision)
		r.rev = kv.ModRevision
		r.put(kv, true)
	}
}

// setPathMTU puts a peer's measured route MTU (0: none) on its routes.
func (r *Reconciler) setPathMTU(cidr netip.Prefix, key wgtypes.Key, mtu int) {
	if r.pathMTU == nil {
		r.pathMTU = map[wgtypes.Key]int{}
	}
	if mtu == 0 {
		delete(r.pathMTU, key)
	} else {
		r.pathMTU[key] = mtu
	}
	r.rev = 0 // not an etcd change
	r.resolve(cidr, true)
}
