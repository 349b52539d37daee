package samenode

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/keys"
	"github.com/wgcni/wgcni/daemon/wgdev"
)

// Options configure the daemon's side of same-node encryption.
type Options struct {
	Device   string // the node's WireGuard device; the hub is HubName(Device)
	Port     int    // hub UDP port
	MTU      int
	Mode     wgdev.Mode
	StateDir string // hub key lives in <StateDir>/samenode
	RunDir   string
	Gateway  netip.Addr // this node's gateway of each family it has
	Gateway6 netip.Addr
	// This node's PodCIDR of each family it has: the pod route re-created
	// for registrations that do not record it.
	PodCIDR  netip.Prefix
	PodCIDR6 netip.Prefix
	Resync   time.Duration
	Log      *slog.Logger
}

// Daemon owns the hub device, its peers and routes, and the pod device host.
type Daemon struct {
	o       Options
	hub     Hub
	wg      *wgctrl.Client
	podMode wgdev.Mode // WireGuard of new pods' devices
}

// Setup ensures the hub device (adopted if it exists) with its own key, the
// pod device host process, and an initial reconcile of the registry.
func Setup(o Options) (*Daemon, error) {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	hub := Hub{Name: HubName(o.Device)}
	if o.Gateway.IsValid() {
		hub.Gateway = net.IP(o.Gateway.AsSlice())
	}
	if o.Gateway6.IsValid() {
		hub.Gateway6 = net.IP(o.Gateway6.AsSlice())
	}
	// Pod devices send to the hub on 127.0.0.1: loopback must be up.
	if lo, err := netlink.LinkByName("lo"); err == nil && lo.Attrs().Flags&net.FlagUp == 0 {
		if err := netlink.LinkSetUp(lo); err != nil {
			return nil, fmt.Errorf("set lo up: %w", err)
		}
	}
	priv, _, err := keys.LoadOrCreate(filepath.Join(o.StateDir, "samenode"))
	if err != nil {
		return nil, fmt.Errorf("same-node hub key: %w", err)
	}
	dev, err := wgdev.Ensure(wgdev.Options{Name: hub.Name, MTU: DeviceMTU, Want: o.Mode, RunDir: o.RunDir, Log: o.Log})
	if err != nil {
		return nil, fmt.Errorf("same-node hub: %w", err)
	}
	wg, err := wgctrl.New()
	if err != nil {
		return nil, fmt.Errorf("open wgctrl: %w", err)
	}
	if err := wgdev.Configure(wg, hub.Name, priv.Key(), o.Port); err != nil {
		wg.Close()
		return nil, err
	}
	if hub.Gateway6 != nil {
		// Routes of pods' /128s need IPv6 on the hub's interface.
		if err := enableIPv6(hub.Name); err != nil {
			wg.Close()
			return nil, err
		}
	}
	o.Log.Info("same-node hub ready", "device", hub.Name, "mode", dev.Mode, "adopted", dev.Adopted, "port", o.Port, "public_key", priv.Public())
	if err := EnsureHost(o.RunDir, o.Log); err != nil {
		wg.Close()
		return nil, err
	}
	podMode, err := PodDeviceMode(o.Mode, ProbeName(o.Device), o.Log)
	if err != nil {
		wg.Close()
		return nil, err
	}
	o.Log.Info("same-node pod devices", "mode", podMode)
	d := &Daemon{o: o, hub: hub, wg: wg, podMode: podMode}
	d.Sync()
	return d, nil
}

// PodMode is the WireGuard new pods' devices use (for the node file).
func (d *Daemon) PodMode() wgdev.Mode { return d.podMode }

// Run reconciles until ctx ends: at once when the pod device host dies
// (watchHost), every Resync interval anyway, and sooner again while pods
// wait for a device (a re-creation that failed, e.g. because the dead
// host's TUN was still being torn down).
func (d *Daemon) Run(ctx context.Context) {
	defer d.wg.Close()
	died := make(chan struct{}, 1)
	go watchHost(ctx, d.o.RunDir, d.o.Resync, died, d.o.Log)
	t := time.NewTicker(d.o.Resync)
	defer t.Stop()
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	backoff := retryMin
	for {
		select {
		case <-ctx.Done():
			return
		case <-died:
			d.o.Log.Warn("same-node pod device host gone; restarting it and re-creating pod devices")
		case <-t.C:
		case <-retry.C:
		}
		if err := EnsureHost(d.o.RunDir, d.o.Log); err != nil {
			d.o.Log.Error("same-node pod device host", "err", err)
		}
		if r := d.Sync(); r.Pending > 0 {
			retry.Reset(backoff)
			backoff = min(2*backoff, d.o.Resync)
		} else {
			backoff = retryMin
		}
	}
}

// retryMin is the first quick retry for pods still without a device.
const retryMin = 200 * time.Millisecond

// SyncResult says what one reconcile changed, for tests and logs.
type SyncResult struct {
	Added, Removed int
	Recreated      int // pod devices re-created from the registry
	Pending        int // pods whose device could not be re-created yet
}

// Sync makes pod devices, the hub and the registry agree, under the
// registry lock (no ADD, DEL or GC runs meanwhile):
//   - a registered pod whose device is gone (the pod device host died, or
//     a kernel device was deleted) gets a new one (recreate);
//   - the hub has a peer (AllowedIPs exactly the pod's /32 and /128) and a
//     route per pod address, nothing else;
//   - hosted pod devices without a registration (an ADD killed half-way,
//     a DEL that never came and a GC that removed the file) are closed.
func (d *Daemon) Sync() (r SyncResult) {
	unlock, err := lockRegistry(d.o.RunDir)
	if err != nil {
		d.o.Log.Error("same-node reconcile skipped", "err", err)
		r.Pending = 1
		return r
	}
	defer unlock()
	pods, errs := List(d.o.RunDir)
	for _, err := range errs {
		d.o.Log.Warn("skipping bad same-node registration", "err", err)
	}
	hosted, hostErr := Call(d.o.RunDir, Request{Op: "list"}, callTimeout)
	if hostErr != nil {
		d.o.Log.Error("same-node pod device host: list devices", "err", hostErr)
	}
	hostedIDs := map[string]bool{}
	if hostErr == nil {
		for _, id := range hosted.IDs {
			hostedIDs[id] = true
		}
	}
	for _, p := range pods {
		alive, err := d.deviceAlive(p, hostErr == nil, hostedIDs)
		if err != nil || alive {
			continue
		}
		switch err := d.recreate(p); {
		case err == nil:
			r.Recreated++
		case errors.Is(err, errNetnsGone):
			d.o.Log.Info("same-node pod device not re-created: pod netns gone; DEL or GC will remove the registration", "pod", p.ID, "netns", p.Netns)
		default:
			r.Pending++
			d.o.Log.Error("re-create same-node pod device", "pod", p.ID, "err", err)
		}
	}
	r.Added, r.Removed = d.syncHub(pods)
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
			if _, err := Call(d.o.RunDir, Request{Op: "del", ID: id}, callTimeout); err == nil {
				r.Removed++
				d.o.Log.Info("removed unregistered pod device", "id", id)
			}
		}
	}
	return r
}

// deviceAlive reports whether p's device exists: a hosted one is in the
// host's list, a kernel one is a wireguard link in the pod's netns. err
// means it cannot be told (host unreachable, netns unreadable): leave it.
func (d *Daemon) deviceAlive(p *Pod, hostOK bool, hosted map[string]bool) (bool, error) {
	if p.DeviceMode() == wgdev.Kernel {
		if !netnsExists(p.Netns) {
			return true, errNetnsGone // nothing to re-create into
		}
		return kernelDeviceUp(p)
	}
	if !hostOK {
		return true, errors.New("pod device host unreachable")
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
// with the pod device host's process, or deleted. The old private key died
// with it and pod keys are never stored, so the new device has a fresh key
// (made where the device lives, like at ADD); the registration and the hub
// peer follow the new key (plumb), the pod keeps its name, addresses and
// routes. While it has no device the pod has no route at all: it fails
// closed and never reaches the bridge in clear. On error the new device is
// removed again and the registration kept, for the next try.
func (d *Daemon) recreate(p *Pod) error {
	if !netnsExists(p.Netns) {
		return errNetnsGone
	}
	q := *p
	// Registrations from before route parameters were recorded.
	if q.MTU == 0 {
		q.MTU = d.o.MTU
	}
	if q.IP.IsValid() && !q.PodCIDR.IsValid() {
		q.PodCIDR = d.o.PodCIDR
	}
	if q.IP6.IsValid() && !q.PodCIDR6.IsValid() {
		q.PodCIDR6 = d.o.PodCIDR6
	}
	start := time.Now()
	if err := plumb(d.wg, d.o.RunDir, d.hub, &q, p.PublicKey); err != nil {
		if rerr := removeDevice(d.o.RunDir, q.ID, &q); rerr != nil {
			err = errors.Join(err, fmt.Errorf("remove half-made device: %w", rerr))
		}
		// plumb may have registered the new key already: the hub sync of
		// this pass must follow what is on disk.
		if cur, lerr := Load(d.o.RunDir, p.ID); lerr == nil && cur != nil {
			*p = *cur
		}
		return err
	}
	d.o.Log.Info("re-created same-node pod device", "pod", q.ID, "netns", q.Netns, "mode", q.DeviceMode(),
		"public_key", q.PublicKey, "replaces", p.PublicKey, "port", q.Port, "took", time.Since(start).Round(time.Microsecond))
	*p = q
	return nil
}

// syncHub makes the hub's peers and routes match pods.
func (d *Daemon) syncHub(pods []*Pod) (added, removed int) {
	want := map[wgtypes.Key]*Pod{}
	wantIP := map[netip.Addr]bool{}
	for _, p := range pods {
		k, err := wgtypes.ParseKey(p.PublicKey)
		if err != nil {
			continue
		}
		want[k] = p
		for _, a := range p.Addrs() {
			wantIP[a] = true
		}
	}
	dev, err := d.wg.Device(d.hub.Name)
	if err != nil {
		d.o.Log.Error("read same-node hub", "device", d.hub.Name, "err", err)
		return
	}
	have := map[wgtypes.Key]bool{}
	for _, peer := range dev.Peers {
		p, ok := want[peer.PublicKey]
		if !ok {
			if err := d.wg.ConfigureDevice(d.hub.Name, wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: peer.PublicKey, Remove: true}}}); err != nil {
				d.o.Log.Error("remove orphaned hub peer", "peer", peer.PublicKey, "err", err)
			} else {
				removed++
				d.o.Log.Info("removed orphaned hub peer", "peer", peer.PublicKey)
			}
			continue
		}
		if sameNets(peer.AllowedIPs, AllowedIPs(p)) && peer.Endpoint != nil && peer.Endpoint.Port == p.Port {
			have[peer.PublicKey] = true
		}
	}
	for k, p := range want {
		if have[k] {
			for _, a := range p.Addrs() {
				if err := d.hub.ensureRoute(a); err != nil {
					d.o.Log.Error("same-node route", "pod", p.ID, "ip", a, "err", err)
				}
			}
			continue
		}
		if err := d.hub.ApplyPod(d.wg, p); err != nil {
			d.o.Log.Error("same-node pod", "pod", p.ID, "err", err)
			continue
		}
		added++
		d.o.Log.Info("hub peer added", "pod", p.ID, "ips", p.Addrs())
	}
	if routes, err := d.hub.Routes(); err == nil {
		for _, ip := range routes {
			if !wantIP[ip] {
				if err := d.hub.deleteRoute(ip); err == nil {
					removed++
				}
			}
		}
	}
	return added, removed
}

// sameNets reports whether a and b hold the same prefixes, in any order.
func sameNets(a, b []net.IPNet) bool {
	if len(a) != len(b) {
		return false
	}
	seen := map[string]int{}
	for _, n := range a {
		seen[n.String()]++
	}
	for _, n := range b {
		if seen[n.String()] == 0 {
			return false
		}
		seen[n.String()]--
	}
	return true
}

// EnsureHost starts the pod device host unless one answers on its socket.
// It is detached (own session) so it outlives daemon restarts: pod devices
// keep running while wgcnid restarts.
func EnsureHost(runDir string, log *slog.Logger) error {
	if _, err := Call(runDir, Request{Op: "ping"}, 2*time.Second); err == nil {
		return nil
	}
	if err := os.MkdirAll(runDir, 0o755); err != nil {
		return err
	}
	logPath := filepath.Join(runDir, "samenode-host.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open %s: %w", logPath, err)
	}
	defer logf.Close()
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	defer pr.Close()
	cmd := exec.Command("/proc/self/exe", "samenode-host", "--run-dir", runDir)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{pw}
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		pw.Close()
		return fmt.Errorf("start same-node pod device host: %w", err)
	}
	pw.Close()
	go cmd.Wait() // reap it if it exits while we are its parent
	pr.SetReadDeadline(time.Now().Add(15 * time.Second))
	line, _ := bufio.NewReader(pr).ReadString('\n')
	if strings.TrimSpace(line) != "ready" {
		cmd.Process.Kill()
		return fmt.Errorf("same-node pod device host did not start: %q (log: %s)", strings.TrimSpace(line), logPath)
	}
	log.Info("started same-node pod device host", "pid", cmd.Process.Pid)
	return nil
}

// Cleanup removes the hub (and its routes), the pod device host, kernel
// pod devices and the registry. Pods that still exist lose their WireGuard
// device: with same-node encryption they fail closed until re-added.
func Cleanup(runDir, device string, log *slog.Logger) error {
	var errs []error
	// Kernel pod devices outlive every process: remove them while the
	// registry still says where they are.
	pods, _ := List(runDir)
	for _, p := range pods {
		if p.DeviceMode() == wgdev.Kernel {
			if err := deleteKernelDevice(p); err != nil {
				errs = append(errs, err)
			}
		}
	}
	hub := Hub{Name: HubName(device)}
	if routes, err := hub.Routes(); err == nil {
		for _, ip := range routes {
			if err := hub.deleteRoute(ip); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := wgdev.Remove(runDir, hub.Name, log); err != nil {
		errs = append(errs, err)
	}
	if b, err := os.ReadFile(HostPIDFile(runDir)); err == nil {
		var pid int
		if _, err := fmt.Sscan(strings.TrimSpace(string(b)), &pid); err == nil && pid > 1 && isHost(pid) {
			syscall.Kill(pid, syscall.SIGTERM)
			for i := 0; i < 100 && isHost(pid); i++ {
				time.Sleep(50 * time.Millisecond)
			}
		}
	}
	os.Remove(HostSocket(runDir))
	os.Remove(HostPIDFile(runDir))
	if err := os.RemoveAll(Dir(runDir)); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// isHost reports whether pid is a live samenode-host (pids are reused).
func isHost(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		if i := strings.LastIndexByte(string(st), ')'); i >= 0 && i+2 < len(st) && st[i+2] == 'Z' {
			return false
		}
	}
	return strings.Contains(string(b), "samenode-host")
}
