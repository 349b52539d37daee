// Package lease holds this node's PodCIDR in etcd: the cluster config
// record, acquiring a PodCIDR (create-if-absent in a transaction, bound to
// an etcd lease), adopting it again after a restart, keeping the lease alive
// with one KeepAlive stream, and taking the same CIDR back if the record
// vanished. It never renumbers a running node silently.
package lease

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wgcni/wgcni/daemon/etcdutil"
	"github.com/wgcni/wgcni/daemon/nodefile"
	"github.com/wgcni/wgcni/daemon/record"
)

// ErrClusterFull means every node CIDR of the cluster is leased.
var ErrClusterFull = errors.New("cluster CIDR is full")

// TakenError means the CIDR this node must hold is held by another node.
type TakenError struct {
	CIDR netip.Prefix
	By   string
}

func (e *TakenError) Error() string {
	return fmt.Sprintf("PodCIDR %s is now held by node %q", e.CIDR, e.By)
}

// Held describes the lease record this node owns.
type Held struct {
	// CIDRs are the node's CIDRs, one per family of the cluster, the
	// key's (primary) first; the others' guard keys are bound to LeaseID
	// too (guard.go).
	CIDRs   []netip.Prefix
	Key     string
	LeaseID clientv3.LeaseID
	// How it was obtained: "created", "adopted" (own record found, e.g.
	// after a restart) or "retaken" (own record had vanished).
	How string
}

// Primary is the CIDR that keys the record.
func (h Held) Primary() netip.Prefix {
	if len(h.CIDRs) == 0 {
		return netip.Prefix{}
	}
	return h.CIDRs[0]
}

// Acquirer obtains and keeps this node's lease record.
type Acquirer struct {
	Client  *clientv3.Client
	Prefix  string
	Cluster record.Cluster
	Node    string
	TTL     time.Duration
	Log     *slog.Logger
}

func (a *Acquirer) ttlSeconds() int64 {
	s := int64(a.TTL / time.Second)
	if s < 1 {
		s = 1
	}
	return s
}

// Acquire returns this node's lease record, publishing self (its CIDRs
// are ignored): one node CIDR of every grid of the cluster. An existing
// record of this node is adopted with its live lease, so a restart keeps
// the CIDRs and the peers see no change. Otherwise preferred (e.g. the
// CIDRs remembered in the state dir; those not on a grid are ignored) are
// tried first, then free CIDRs in random order so racing nodes rarely
// collide.
func (a *Acquirer) Acquire(ctx context.Context, self record.Lease, preferred ...netip.Prefix) (Held, error) {
	kvs, _, err := etcdutil.List(ctx, a.Client, record.SubnetsPrefix(a.Prefix))
	if err != nil {
		return Held{}, err
	}
	primary := a.Cluster.Primary()
	taken := make(map[netip.Prefix]bool, len(kvs))
	var own []*mvccpb.KeyValue
	for _, kv := range kvs {
		cidr, err := record.ParseSubnetKey(a.Prefix, string(kv.Key), a.Cluster)
		if err != nil {
			continue // not on our grid; cannot collide with a node CIDR
		}
		taken[cidr] = true
		if l, err := record.DecodeSubnet(a.Prefix, string(kv.Key), kv.Value, a.Cluster); err == nil && l.Node == a.Node {
			own = append(own, kv)
		}
	}
	want := onGrid(primary, preferred)
	if len(own) > 0 {
		h, err := a.adoptOwn(ctx, own, self, want)
		if err == nil || !errors.Is(err, errGone) {
			return h, err
		}
		// Our record expired while we looked: fall through and create.
	}
	if want.IsValid() && taken[want] {
		a.Log.Warn("remembered PodCIDR is held by another node; taking a different one", "cidr", want)
	}
	ps, err := a.pickers(ctx, taken, preferred)
	if err != nil {
		return Held{}, err
	}

	leaseID, err := a.grant(ctx)
	if err != nil {
		return Held{}, err
	}
	h, err := a.createPicked(ctx, ps, self, leaseID)
	if err != nil {
		a.revoke(leaseID)
	}
	return h, err
}

// onGrid returns the first of cidrs that is a node CIDR of g.
func onGrid(g record.Grid, cidrs []netip.Prefix) netip.Prefix {
	for _, c := range cidrs {
		if g.Holds(c) {
			return c
		}
	}
	return netip.Prefix{}
}

// Retake re-establishes this node's record for exactly cidrs (what it held)
// after the keepalive stream ended or the record was seen deleted: adopt it
// if it is still ours, create it if it is free, and return a *TakenError if
// another node holds it (the caller logs, counts and retries; it never
// renumbers).
func (a *Acquirer) Retake(ctx context.Context, self record.Lease, cidrs []netip.Prefix) (Held, error) {
	key := record.SubnetKey(a.Prefix, cidrs[0])
	resp, err := a.Client.Get(ctx, key)
	if err != nil {
		return Held{}, fmt.Errorf("read own record %s: %w", key, err)
	}
	if len(resp.Kvs) > 0 {
		kv := resp.Kvs[0]
		l, derr := record.DecodeSubnet(a.Prefix, key, kv.Value, a.Cluster)
		if derr == nil && l.Node == a.Node {
			h, err := a.adopt(ctx, kv, self)
			if !errors.Is(err, errGone) {
				return h, err
			}
		} else if derr == nil {
			return Held{}, &TakenError{CIDR: cidrs[0], By: l.Node}
		} else {
			return Held{}, &TakenError{CIDR: cidrs[0], By: "(unreadable record: " + derr.Error() + ")"}
		}
	}
	for _, c := range cidrs[1:] {
		if err := a.clearOwnGuard(ctx, c); err != nil {
			return Held{}, err
		}
	}
	leaseID, err := a.grant(ctx)
	if err != nil {
		return Held{}, err
	}
	h, won, _, err := a.create(ctx, cidrs, self, leaseID)
	if err != nil || !won {
		a.revoke(leaseID)
		if err == nil {
			err = &TakenError{CIDR: cidrs[0], By: "another node (raced)"}
		}
		return Held{}, err
	}
	h.How = "retaken"
	return h, nil
}

// Publish rewrites this node's record with self (e.g. a new endpoint or
// key). The transaction compares the record's lease with ours, so a node can
// only ever overwrite its own record.
func (a *Acquirer) Publish(ctx context.Context, h Held, self record.Lease) error {
	self.CIDRs = h.CIDRs
	resp, err := a.Client.Txn(ctx).
		If(clientv3.Compare(clientv3.LeaseValue(h.Key), "=", h.LeaseID)).
		Then(clientv3.OpPut(h.Key, string(self.Encode()), clientv3.WithLease(h.LeaseID))).
		Commit()
	if err != nil {
		return fmt.Errorf("update own record %s: %w", h.Key, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("update own record %s: it is no longer bound to our lease %x", h.Key, int64(h.LeaseID))
	}
	return nil
}

var errGone = errors.New("record vanished")

// adoptOwn picks one of this node's records (preferred if present), adopts
// it and deletes any others, which only a crash mid-acquire or an operator
// could have left behind.
func (a *Acquirer) adoptOwn(ctx context.Context, own []*mvccpb.KeyValue, self record.Lease, preferred netip.Prefix) (Held, error) {
	pick := own[0]
	for _, kv := range own {
		if preferred.IsValid() && string(kv.Key) == record.SubnetKey(a.Prefix, preferred) {
			pick = kv
		}
	}
	for _, kv := range own {
		if kv == pick {
			continue
		}
		k := string(kv.Key)
		_, err := a.Client.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(k), "=", kv.ModRevision)).
			Then(clientv3.OpDelete(k)).Commit()
		if err != nil {
			return Held{}, fmt.Errorf("delete extra own record %s: %w", k, err)
		}
		a.Log.Warn("deleted an extra record of this node", "key", k)
	}
	return a.adopt(ctx, pick, self)
}

// adopt takes over an existing record of ours: keep its lease if it is
// alive with our TTL, otherwise move it to a fresh lease. Either way the
// record never disappears, so peers never drop us.
func (a *Acquirer) adopt(ctx context.Context, kv *mvccpb.KeyValue, self record.Lease) (Held, error) {
	key := string(kv.Key)
	old := clientv3.LeaseID(kv.Lease)
	leaseID := old
	if old != clientv3.NoLease {
		ttl, err := a.Client.TimeToLive(ctx, old)
		if err != nil {
			return Held{}, fmt.Errorf("check lease %x of own record %s: %w", int64(old), key, err)
		}
		if ttl.TTL <= 0 {
			return Held{}, errGone
		}
		if ttl.GrantedTTL != a.ttlSeconds() {
			leaseID = clientv3.NoLease
		}
	} else {
		leaseID = clientv3.NoLease
	}
	cur, err := record.DecodeSubnet(a.Prefix, key, kv.Value, a.Cluster)
	if err != nil {
		return Held{}, fmt.Errorf("adopt own record: %w", err)
	}
	if len(cur.CIDRs) < len(a.Cluster.Grids) {
		return Held{}, fmt.Errorf("own record %s has no podCIDRv6 but the cluster is dual-stack; delete it (etcdctl del %s) so this node leases both families", key, key)
	}
	guardCmps, err := a.guardCompares(ctx, cur.CIDRs[1:])
	if err != nil {
		return Held{}, err
	}
	self.CIDRs = cur.CIDRs
	fresh := leaseID == clientv3.NoLease
	if fresh {
		if leaseID, err = a.grant(ctx); err != nil {
			return Held{}, err
		}
	}
	// Compare on the lease the record had when we read it: if it changed,
	// someone else touched our record and we must look again.
	cmps := []clientv3.Cmp{clientv3.Compare(clientv3.LeaseValue(key), "=", old), clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision)}
	ops := []clientv3.Op{clientv3.OpPut(key, string(self.Encode()), clientv3.WithLease(leaseID))}
	cmps = append(cmps, guardCmps...)
	for _, c := range cur.CIDRs[1:] {
		ops = append(ops, a.guardPut(c, cur.CIDRs[0], leaseID))
	}
	resp, err := a.Client.Txn(ctx).If(cmps...).Then(ops...).Commit()
	if err != nil || !resp.Succeeded {
		if fresh {
			a.revoke(leaseID)
		}
		if err != nil {
			return Held{}, fmt.Errorf("adopt own record %s: %w", key, err)
		}
		return Held{}, errGone
	}
	if fresh && old != clientv3.NoLease {
		// Nothing else is bound to the old lease; let it go now instead of
		// waiting for its TTL.
		a.revoke(old)
	}
	return Held{CIDRs: cur.CIDRs, Key: key, LeaseID: leaseID, How: "adopted"}, nil
}

// create writes self at the key of cidrs[0] if no record exists there,
// with the guard keys of the further CIDRs in the same transaction, only if
// they are absent too. When not won, takenAt is the index in cidrs of the
// one that was held: a guard's, or 0 for the record itself.
func (a *Acquirer) create(ctx context.Context, cidrs []netip.Prefix, self record.Lease, leaseID clientv3.LeaseID) (h Held, won bool, takenAt int, err error) {
	key := record.SubnetKey(a.Prefix, cidrs[0])
	self.CIDRs = cidrs
	cmps := []clientv3.Cmp{clientv3.Compare(clientv3.Version(key), "=", 0)}
	ops := []clientv3.Op{clientv3.OpPut(key, string(self.Encode()), clientv3.WithLease(leaseID))}
	var orElse []clientv3.Op
	for _, c := range cidrs[1:] {
		gk := record.GuardKey(a.Prefix, c)
		cmps = append(cmps, clientv3.Compare(clientv3.Version(gk), "=", 0))
		ops = append(ops, a.guardPut(c, cidrs[0], leaseID))
		orElse = append(orElse, clientv3.OpGet(gk, clientv3.WithCountOnly()))
	}
	resp, err := a.Client.Txn(ctx).If(cmps...).Then(ops...).Else(orElse...).Commit()
	if err != nil {
		return Held{}, false, 0, fmt.Errorf("create record %s: %w", key, err)
	}
	if !resp.Succeeded {
		for i, r := range resp.Responses {
			if r.GetResponseRange().Count > 0 {
				return Held{}, false, i + 1, nil
			}
		}
		return Held{}, false, 0, nil
	}
	return Held{CIDRs: cidrs, Key: key, LeaseID: leaseID, How: "created"}, true, 0, nil
}

func (a *Acquirer) grant(ctx context.Context) (clientv3.LeaseID, error) {
	g, err := a.Client.Grant(ctx, a.ttlSeconds())
	if err != nil {
		return 0, fmt.Errorf("grant etcd lease (ttl %ds): %w", a.ttlSeconds(), err)
	}
	return g.ID, nil
}

// revoke is best effort: an unrevoked lease just expires after its TTL.
func (a *Acquirer) revoke(id clientv3.LeaseID) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if _, err := a.Client.Revoke(ctx, id); err != nil {
		a.Log.Debug("revoke unused lease", "lease", fmt.Sprintf("%x", int64(id)), "err", err)
	}
}

// freeCIDRs lists the node CIDRs of g not in taken.
func freeCIDRs(g record.Grid, taken map[netip.Prefix]bool) []netip.Prefix {
	n := g.NodeCount()
	out := make([]netip.Prefix, 0, max(n-len(taken), 0))
	addr := g.CIDR.Addr()
	for i := 0; i < n; i++ {
		p := netip.PrefixFrom(addr, g.NodePrefixLen)
		if !taken[p] {
			out = append(out, p)
		}
		addr = nextBlock(addr, g.NodePrefixLen)
	}
	return out
}

// nextBlock returns the first address of the block after addr's /bits block.
func nextBlock(addr netip.Addr, bits int) netip.Addr {
	b := addr.AsSlice()
	// Add 1 at bit position bits-1 (counting from the most significant).
	i := (bits - 1) / 8
	carry := uint(1) << (7 - uint(bits-1)%8)
	for ; i >= 0 && carry > 0; i-- {
		s := uint(b[i]) + carry
		b[i] = byte(s)
		carry = s >> 8
	}
	out, _ := netip.AddrFromSlice(b)
	return out
}

// rememberFiles keep the last CIDR of each grid in the state dir, by
// position (primary first; the names earlier versions used), so a node
// whose record expired (e.g. a long outage) asks for the same CIDRs again.
var rememberFiles = []string{"podcidr", "podcidr6"}

// LoadRemembered returns the CIDRs remembered in stateDir; unreadable
// ones are left out (then any CIDR of that grid will do).
func LoadRemembered(stateDir string) []netip.Prefix {
	var out []netip.Prefix
	for _, f := range rememberFiles {
		if p := loadPrefix(stateDir, f); p.IsValid() {
			out = append(out, p)
		}
	}
	return out
}

// Remember stores cidrs (primary first) in stateDir.
func Remember(stateDir string, cidrs []netip.Prefix) error {
	for i, p := range cidrs {
		if i >= len(rememberFiles) {
			break
		}
		if err := storePrefix(stateDir, rememberFiles[i], p); err != nil {
			return err
		}
	}
	return nil
}

func loadPrefix(stateDir, name string) netip.Prefix {
	b, err := os.ReadFile(filepath.Join(stateDir, name))
	if err != nil {
		return netip.Prefix{}
	}
	p, err := netip.ParsePrefix(strings.TrimSpace(string(b)))
	if err != nil {
		return netip.Prefix{}
	}
	return p
}

func storePrefix(stateDir, name string, p netip.Prefix) error {
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return fmt.Errorf("remember %s: %w", name, err)
	}
	return nodefile.WriteFileAtomic(filepath.Join(stateDir, name), []byte(p.String()+"\n"), 0o644)
}
