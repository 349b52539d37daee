package reconcile

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/samenode/attach"
	"github.com/wgcni/wgcni/daemon/samenode/hub"
	"github.com/wgcni/wgcni/daemon/samenode/poddevices"
	"github.com/wgcni/wgcni/daemon/samenode/registry"
	"github.com/wgcni/wgcni/daemon/wgdev"
)

// SyncResult says what one reconcile changed, for tests and logs.
type SyncResult struct {
	Added, Removed int
	Recreated      int // pod devices re-created from the registry
	Failed         int // steps that failed (kept in the dirty set, retried)
}

// Sync runs one reconcile pass (Run does, on its events).
func (r *Reconciler) Sync() SyncResult { return r.sync(map[string]error{}) }

// sync makes pod devices, the hub and the registry agree, under the
// registry lock (no ADD, DEL or GC runs meanwhile):
//   - a registered pod whose device is gone (the pod device process died,
//     or a kernel device was deleted) gets a new one (recreate);
//   - the hub has a peer (AllowedIPs exactly the pod's addresses) and a
//     route per pod address, nothing else;
//   - hosted pod devices without a registration (an ADD killed half-way,
//     a DEL that never came and a GC that removed the file) are closed.
//
// What fails goes into failed (by what it is), which becomes the dirty
// set.
func (r *Reconciler) sync(failed map[string]error) (res SyncResult) {
	defer func() {
		res.Failed = len(failed)
		r.settle(failed)
	}()
	fail := func(key, msg string, err error, args ...any) {
		failed[key] = err
		r.o.Log.Error(msg+"; will retry", append(args, "err", err)...)
	}
	unlock, err := registry.Lock(r.o.RunDir)
	if err != nil {
		fail("registry lock", "same-node reconcile skipped", err)
		return res
	}
	defer unlock()
	pods, errs := registry.List(r.o.RunDir)
	for _, err := range errs {
		// Data, not a step that can succeed on retry: DEL or GC removes it.
		r.o.Log.Warn("skipping bad same-node registration", "err", err)
	}
	hosted, hostErr := poddevices.Call(r.o.RunDir, poddevices.Request{Op: "list"}, poddevices.CallTimeout)
	if hostErr != nil {
		fail(podDevicesKey, "same-node pod device process: list devices", hostErr)
	}
	hostedIDs := map[string]bool{}
	if hostErr == nil {
		for _, id := range hosted.IDs {
			hostedIDs[id] = true
		}
	}
	for _, p := range pods {
		alive, err := deviceAlive(p, hostErr == nil, hostedIDs)
		if err != nil || alive {
			continue
		}
		switch err := r.recreate(p); {
		case err == nil:
			res.Recreated++
		case errors.Is(err, errNetnsGone):
			r.o.Log.Info("same-node pod device not re-created: pod netns gone; DEL or GC will remove the registration", "pod", p.ID, "netns", p.Netns)
		default:
			fail(p.ID, "re-create same-node pod device", err, "pod", p.ID)
		}
	}
	res.Added, res.Removed = r.syncHub(pods, fail)
	if hostErr == nil {
		ids := map[string]bool{}
		for _, p := range pods {
			ids[p.ID] = true
		}
		for _, id := range hosted.IDs {
			if ids[id] {
				continue
			}
			// Safe under the lock: an ADD registers before releasing it.
			if _, err := poddevices.Call(r.o.RunDir, poddevices.Request{Op: "del", ID: id}, poddevices.CallTimeout); err != nil {
				fail("device "+id, "remove unregistered pod device", err, "id", id)
				continue
			}
			res.Removed++
			r.o.Log.Info("removed unregistered pod device", "id", id)
		}
	}
	return res
}

// deviceAlive reports whether p's device exists: a hosted one is in the
// pod device process's list, a kernel one is a wireguard link in the pod's
// netns. err means it cannot be told (process unreachable — already a
// failed step —, netns unreadable): leave it.
func deviceAlive(p *registry.Pod, hostOK bool, hosted map[string]bool) (bool, error) {
	if p.DeviceMode() == wgdev.Kernel {
		if !netnsExists(p.Netns) {
			return true, errNetnsGone // nothing to re-create into
		}
		return attach.KernelDeviceUp(p)
	}
	if !hostOK {
		return true, errors.New("pod device process unreachable")
	}
	return hosted[p.ID], nil
}

// errNetnsGone: the pod's netns is gone, so is the pod; its DEL or GC
// removes the registration.
var errNetnsGone = errors.New("pod netns gone")

// netnsExists reports whether path is (still) a network namespace: a
// deleted pod's path may be gone, or an empty bind-mount target left.
func netnsExists(path string) bool {
	n, err := ns.GetNS(path)
	if err != nil {
		return false
	}
	n.Close()
	return true
}

// recreate gives registered pod p a new device after its device died —
// with the pod device process, or deleted. The old private key died with
// it and pod keys are never stored, so the new device has a fresh key
// (made where the device lives, like at ADD); the registration and the hub
// peer follow the new key (attach.Plumb), the pod keeps its name,
// addresses and routes. While it has no device the pod has no route at
// all: it fails closed and never reaches the bridge in clear. On error the
// new device is removed again and the registration kept, for the next try.
func (r *Reconciler) recreate(p *registry.Pod) error {
	if !netnsExists(p.Netns) {
		return errNetnsGone
	}
	q := *p
	// Registrations from before route parameters were recorded.
	if q.MTU == 0 {
		q.MTU = r.o.MTU
	}
	for _, a := range q.IPs {
		if _, ok := q.PodCIDR(a); ok {
			continue
		}
		for _, c := range r.o.PodCIDRs {
			if c.Addr().Is4() == a.Is4() {
				q.PodCIDRs = append(q.PodCIDRs[:len(q.PodCIDRs):len(q.PodCIDRs)], c)
			}
		}
	}
	start := time.Now()
	if err := attach.Plumb(r.wg, r.o.RunDir, r.hub, &q, p.PublicKey); err != nil {
		if rerr := attach.RemoveDevice(r.o.RunDir, q.ID, &q); rerr != nil {
			err = errors.Join(err, fmt.Errorf("remove half-made device: %w", rerr))
		}
		// Plumb may have registered the new key already: the hub sync of
		// this pass must follow what is on disk.
		if cur, lerr := registry.Load(r.o.RunDir, p.ID); lerr == nil && cur != nil {
			*p = *cur
		}
		return err
	}
	r.o.Log.Info("re-created same-node pod device", "pod", q.ID, "netns", q.Netns, "mode", q.DeviceMode(),
		"public_key", q.PublicKey, "replaces", p.PublicKey, "port", q.Port, "took", time.Since(start).Round(time.Microsecond))
	*p = q
	return nil
}

// syncHub makes the hub's peers and routes match pods.
func (r *Reconciler) syncHub(pods []*registry.Pod, fail func(key, msg string, err error, args ...any)) (added, removed int) {
	want := map[wgtypes.Key]*registry.Pod{}
	wantIP := map[netip.Addr]bool{}
	for _, p := range pods {
		k, err := wgtypes.ParseKey(p.PublicKey)
		if err != nil {
			r.o.Log.Warn("same-node registration without a valid public key; no hub peer", "pod", p.ID, "err", err)
			continue
		}
		want[k] = p
		for _, a := range p.IPs {
			wantIP[a] = true
		}
	}
	dev, err := r.wg.Device(r.hub.Name)
	if err != nil {
		fail("hub", "read same-node hub", err, "device", r.hub.Name)
		return
	}
	have := map[wgtypes.Key]bool{}
	for _, peer := range dev.Peers {
		p, ok := want[peer.PublicKey]
		if !ok {
			if err := r.wg.ConfigureDevice(r.hub.Name, wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: peer.PublicKey, Remove: true}}}); err != nil {
				fail("hub peer "+peer.PublicKey.String(), "remove orphaned hub peer", err, "peer", peer.PublicKey)
			} else {
				removed++
				r.o.Log.Info("removed orphaned hub peer", "peer", peer.PublicKey)
			}
			continue
		}
		if hub.SameNets(peer.AllowedIPs, hub.AllowedIPs(p)) && peer.Endpoint != nil && peer.Endpoint.Port == p.Port {
			have[peer.PublicKey] = true
		}
	}
	for k, p := range want {
		if have[k] {
			if err := r.hub.EnsureRoutes(p); err != nil {
				fail(p.ID, "same-node route", err, "pod", p.ID, "ips", p.IPs)
			}
			continue
		}
		if err := r.hub.ApplyPod(r.wg, p); err != nil {
			fail(p.ID, "same-node hub peer", err, "pod", p.ID)
			continue
		}
		added++
		r.o.Log.Info("hub peer added", "pod", p.ID, "ips", p.IPs)
	}
	routes, err := r.hub.Routes()
	if err != nil {
		fail("hub routes", "list same-node hub routes", err)
		return added, removed
	}
	for _, ip := range routes {
		if wantIP[ip] {
			continue
		}
		if err := r.hub.DeleteRoute(ip); err != nil {
			fail("hub route "+ip.String(), "remove orphaned hub route", err)
			continue
		}
		removed++
	}
	return added, removed
}
