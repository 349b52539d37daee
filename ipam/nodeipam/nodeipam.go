// Package nodeipam implements wgcni-ipam: pod addresses out of this node's
// PodCIDR (from the node file wgcnid writes). Allocation is the reference
// host-local allocator over its on-disk store, whose file lock makes
// concurrent ADDs on one node safe; GC, which host-local lacks, is built
// on the same store and lock.
package nodeipam

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/plugins/ipam/host-local/backend/allocator"
	"github.com/containernetworking/plugins/plugins/ipam/host-local/backend/disk"

	"github.com/wgcni/wgcni/daemon/nodefile"
	"github.com/wgcni/wgcni/daemon/record"
	"github.com/wgcni/wgcni/ipam/ipamconf"
)

// IPAM carries what the commands need besides their arguments.
type IPAM struct {
	Log *slog.Logger
}

// noLease is the CNI error for "wgcnid has not written the node file yet".
func noLease(runDir string, err error) *types.Error {
	return types.NewError(types.ErrTryAgainLater, "wgcni-ipam: the node daemon has no lease yet: "+err.Error(), "start wgcnid and wait for it to write "+nodefile.Path(runDir))
}

func readNode(runDir string) (*nodefile.Node, error) {
	n, err := nodefile.Read(runDir)
	if errors.Is(err, nodefile.ErrNoLease) {
		return nil, noLease(runDir, err)
	}
	if err != nil {
		return nil, types.NewError(types.ErrTryAgainLater, "wgcni-ipam: unusable node file "+nodefile.Path(runDir)+": "+err.Error(), "")
	}
	return n, nil
}

// dataDir picks where allocations live: ipam.dataDir, else the node file's
// ipamDir. Without either there is nothing to read or release, and the
// runtime should come back once wgcnid is up (code 11).
func dataDir(conf *ipamconf.Conf) (string, *nodefile.Node, error) {
	node, err := readNode(conf.RunDir)
	if conf.DataDir != "" {
		return conf.DataDir, node, nil
	}
	if err != nil {
		return "", nil, err
	}
	return node.IPAMDir, node, nil
}

// RangeSet is the allocator's view of the node: the whole PodCIDR minus its
// network and broadcast addresses and its relay address (record.RelayAddr,
// the last one before the broadcast), with the gateway skipped.
func RangeSet(node *nodefile.Node) (allocator.RangeSet, error) {
	pod, err := node.PodNet()
	if err != nil {
		return nil, err
	}
	gw, err := node.GatewayNet()
	if err != nil {
		return nil, err
	}
	rs := allocator.RangeSet{podRange(pod, gw.IP)}
	if err := rs.Canonicalize(); err != nil {
		return nil, fmt.Errorf("node file field podCIDR %s: %w", node.PodCIDR, err)
	}
	return rs, nil
}

// Add allocates one address for (containerID, ifname).
func (m *IPAM) Add(args *skel.CmdArgs) error {
	conf, err := ipamconf.Parse(args.StdinData)
	if err != nil {
		return err
	}
	result, err := Allocate(conf, args.ContainerID, args.IfName)
	if err != nil {
		return err
	}
	return types.PrintResult(result, conf.CNIVersion)
}

// Allocate is ADD without the CNI framing: the wgcni plugin calls it
// in-process when its ipam type is wgcni-ipam, saving a process start.
func Allocate(conf *ipamconf.Conf, containerID, ifName string) (*current.Result, error) {
	node, err := readNode(conf.RunDir)
	if err != nil {
		return nil, err
	}
	dir := node.IPAMDir
	if conf.DataDir != "" {
		dir = conf.DataDir
	}
	sets, err := RangeSets(node)
	if err != nil {
		return nil, fmt.Errorf("wgcni-ipam: %w", err)
	}
	store, err := disk.New(conf.Name, dir)
	if err != nil {
		return nil, fmt.Errorf("wgcni-ipam: open store %s: %w", filepath.Join(dir, conf.Name), err)
	}
	defer store.Close()

	// One address per family (a dual-stack node has two PodCIDRs), each
	// with a default route via the gateway of its family. The allocator's
	// rangeID keeps a separate "last reserved" cursor per family.
	res := &current.Result{CNIVersion: current.ImplementedSpecVersion}
	for i, rs := range sets {
		ipc, err := allocator.NewIPAllocator(&rs, store, i).Get(containerID, ifName, nil)
		if err != nil {
			if i > 0 {
				// Nothing half-allocated: give back the other families.
				if rerr := releaseLocked(store, containerID, ifName); rerr != nil {
					err = errors.Join(err, rerr)
				}
			}
			return nil, fmt.Errorf("wgcni-ipam: allocate from podCIDR %s for %s/%s: %w", (*net.IPNet)(&rs[0].Subnet).String(), containerID, ifName, err)
		}
		zero := net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
		if ipc.Address.IP.To4() == nil {
			zero = net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
		}
		res.IPs = append(res.IPs, ipc)
		res.Routes = append(res.Routes, &types.Route{Dst: zero, GW: ipc.Gateway})
	}
	return res, nil
}

// RangeSets is RangeSet for every family of the node, primary first.
func RangeSets(node *nodefile.Node) ([]allocator.RangeSet, error) {
	fams, err := node.Families()
	if err != nil {
		return nil, err
	}
	out := make([]allocator.RangeSet, 0, len(fams))
	for _, f := range fams {
		rs := allocator.RangeSet{podRange(f.Pod, f.Gateway.IP)}
		if err := rs.Canonicalize(); err != nil {
			return nil, fmt.Errorf("node file podCIDR %s: %w", f.Pod, err)
		}
		out = append(out, rs)
	}
	return out, nil
}

// releaseLocked releases every address of the attachment under the store
// lock.
func releaseLocked(store *disk.Store, containerID, ifName string) error {
	if err := store.Lock(); err != nil {
		return err
	}
	defer store.Unlock()
	return store.ReleaseByID(containerID, ifName)
}

// Del releases the attachment's address; releasing nothing is success.
func (m *IPAM) Del(args *skel.CmdArgs) error {
	conf, err := ipamconf.Parse(args.StdinData)
	if err != nil {
		return err
	}
	return Release(conf, args.ContainerID, args.IfName)
}

// Release is DEL without the CNI framing.
func Release(conf *ipamconf.Conf, containerID, ifName string) error {
	dir, _, err := dataDir(conf)
	if err != nil {
		if _, nerr := nodefile.Read(conf.RunDir); errors.Is(nerr, nodefile.ErrNoLease) {
			// No node file (wgcnid cleaned up, or not started since a
			// reboot): we cannot know where allocations live, and failing
			// DEL would wedge the runtime's pod removal forever. The
			// address stays allocated until GC with the valid attachments
			// releases it (the runtime calls GC once the daemon is back).
			return nil
		}
		return err
	}
	storeDir := filepath.Join(dir, conf.Name)
	if _, err := os.Stat(storeDir); errors.Is(err, os.ErrNotExist) {
		return nil // nothing was ever allocated here
	}
	store, err := disk.New(conf.Name, dir)
	if err != nil {
		return fmt.Errorf("wgcni-ipam: open store %s: %w", storeDir, err)
	}
	defer store.Close()
	if err := store.Lock(); err != nil {
		return fmt.Errorf("wgcni-ipam: lock store %s: %w", storeDir, err)
	}
	defer store.Unlock()
	if err := store.ReleaseByID(containerID, ifName); err != nil {
		return fmt.Errorf("wgcni-ipam: release %s/%s in %s: %w", containerID, ifName, storeDir, err)
	}
	removeInterrupted(storeDir)
	return nil
}

// removeInterrupted deletes empty allocation files. The store creates an
// address file and then writes the owner into it, both under the store
// lock; an ADD killed between the two leaves an empty file that no DEL
// can ever match (it names no attachment). Holding the lock, we know no
// reservation is in progress, so an empty file is such a leftover. A
// runtime calls DEL after a failed ADD, which makes this the place to
// reclaim it; GC reclaims it as well.
func removeInterrupted(storeDir string) {
	entries, err := os.ReadDir(storeDir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if !e.Type().IsRegular() || net.ParseIP(e.Name()) == nil {
			continue
		}
		if info, err := e.Info(); err == nil && info.Size() == 0 {
			_ = os.Remove(filepath.Join(storeDir, e.Name()))
		}
	}
}

// Check confirms the attachment still holds an address, and the one
// prevResult names if there is a prevResult.
func (m *IPAM) Check(args *skel.CmdArgs) error {
	conf, err := ipamconf.Parse(args.StdinData)
	if err != nil {
		return err
	}
	return Verify(conf, args.ContainerID, args.IfName)
}

// Verify is CHECK without the CNI framing.
func Verify(conf *ipamconf.Conf, containerID, ifName string) error {
	dir, _, err := dataDir(conf)
	if err != nil {
		return err
	}
	store, err := disk.New(conf.Name, dir)
	if err != nil {
		return fmt.Errorf("wgcni-ipam: open store %s: %w", filepath.Join(dir, conf.Name), err)
	}
	defer store.Close()
	if err := store.Lock(); err != nil {
		return fmt.Errorf("wgcni-ipam: lock store: %w", err)
	}
	held := store.GetByID(containerID, ifName)
	store.Unlock()
	if len(held) == 0 {
		return fmt.Errorf("wgcni-ipam CHECK: no address allocated to %s/%s in %s", containerID, ifName, filepath.Join(dir, conf.Name))
	}
	if conf.PrevResult == nil {
		return nil
	}
	for _, ipc := range conf.PrevResult.IPs {
		found := false
		for _, ip := range held {
			if ip.Equal(ipc.Address.IP) {
				found = true
			}
		}
		if !found {
			return fmt.Errorf("wgcni-ipam CHECK: prevResult address %s is not allocated to %s/%s (holds %v)", ipc.Address.IP, containerID, ifName, held)
		}
	}
	return nil
}

// Status reports code 50 until the node file exists and the store is usable.
func (m *IPAM) Status(args *skel.CmdArgs) error {
	conf, err := ipamconf.Parse(args.StdinData)
	if err != nil {
		return err
	}
	return Ready(conf)
}

// Ready is STATUS without the CNI framing.
func Ready(conf *ipamconf.Conf) error {
	node, err := nodefile.Read(conf.RunDir)
	if err != nil {
		return types.NewError(types.ErrPluginNotAvailable, "wgcni-ipam: not ready: "+err.Error(), "")
	}
	if _, err := RangeSets(node); err != nil {
		return types.NewError(types.ErrPluginNotAvailable, "wgcni-ipam: not ready: "+err.Error(), "")
	}
	dir := node.IPAMDir
	if conf.DataDir != "" {
		dir = conf.DataDir
	}
	if err := os.MkdirAll(filepath.Join(dir, conf.Name), 0o755); err != nil {
		return types.NewError(types.ErrPluginNotAvailable, "wgcni-ipam: not ready: store: "+err.Error(), "")
	}
	return nil
}

// GC releases, under the store lock, every allocation whose attachment is
// not in cni.dev/valid-attachments.
func (m *IPAM) GC(args *skel.CmdArgs) error {
	conf, err := ipamconf.Parse(args.StdinData)
	if err != nil {
		return err
	}
	return Collect(conf, m.Log)
}

// Collect is GC without the CNI framing.
func Collect(conf *ipamconf.Conf, log *slog.Logger) error {
	if !conf.HasValidAttachments {
		return types.NewError(types.ErrInvalidNetworkConfig, "invalid network config: field cni.dev/valid-attachments: missing; refusing to garbage-collect without the list of valid attachments", "")
	}
	dir, _, err := dataDir(conf)
	if err != nil {
		return err
	}
	storeDir := filepath.Join(dir, conf.Name)
	if _, err := os.Stat(storeDir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	released, err := GCStore(dir, conf.Name, conf.ValidAttachments)
	for _, r := range released {
		log.Info("GC released address", "ip", r.IP, "containerID", r.ContainerID, "ifname", r.IfName)
	}
	if err != nil {
		return fmt.Errorf("wgcni-ipam GC: %w", err)
	}
	return nil
}

// Allocation is one address file of the disk store.
type Allocation struct {
	IP          net.IP
	ContainerID string
	IfName      string // empty in files written by old host-local versions
}

// List returns the allocations in storeDir (<dataDir>/<network>). The caller holds
// the store lock if it needs a consistent view.
func List(storeDir string) ([]Allocation, error) {
	entries, err := os.ReadDir(storeDir)
	if err != nil {
		return nil, fmt.Errorf("read store %s: %w", storeDir, err)
	}
	var out []Allocation
	for _, e := range entries {
		ip := net.ParseIP(e.Name())
		if ip == nil || !e.Type().IsRegular() {
			continue // lock, last_reserved_ip.N, temp files
		}
		data, err := os.ReadFile(filepath.Join(storeDir, e.Name()))
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			return nil, fmt.Errorf("read allocation %s: %w", e.Name(), err)
		}
		id, ifname, _ := strings.Cut(strings.TrimSpace(string(data)), disk.LineBreak)
		out = append(out, Allocation{IP: ip, ContainerID: strings.TrimSpace(id), IfName: strings.TrimSpace(ifname)})
	}
	return out, nil
}

// GCStore removes, under the store's file lock, every allocation whose
// attachment is not valid, and returns what it removed.
func GCStore(dataDir, network string, valid []types.GCAttachment) ([]Allocation, error) {
	store, err := disk.New(network, dataDir)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", filepath.Join(dataDir, network), err)
	}
	defer store.Close()
	if err := store.Lock(); err != nil {
		return nil, fmt.Errorf("lock store: %w", err)
	}
	defer store.Unlock()

	keep := make(map[types.GCAttachment]bool, len(valid))
	keepID := make(map[string]bool, len(valid))
	for _, a := range valid {
		keep[a] = true
		keepID[a.ContainerID] = true
	}
	storeDir := filepath.Join(dataDir, network)
	allocs, err := List(storeDir)
	if err != nil {
		return nil, err
	}
	var released []Allocation
	var errs []error
	for _, a := range allocs {
		if a.IfName == "" && keepID[a.ContainerID] {
			continue // legacy file without ifname: keep if the container is valid
		}
		if keep[types.GCAttachment{ContainerID: a.ContainerID, IfName: a.IfName}] {
			continue
		}
		if err := os.Remove(disk.GetEscapedPath(storeDir, a.IP.String())); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("release %s: %w", a.IP, err))
			continue
		}
		released = append(released, a)
	}
	return released, errors.Join(errs...)
}

// podRange is one family's range: the PodCIDR up to the address before its
// relay address, which a node behind a NAT carries on its WireGuard device.
func podRange(pod *net.IPNet, gw net.IP) allocator.Range {
	r := allocator.Range{Subnet: types.IPNet(*pod), Gateway: gw}
	if p, err := netip.ParsePrefix(pod.String()); err == nil && record.RelayAddr(p).IsValid() {
		r.RangeEnd = net.IP(record.RelayAddr(p).Prev().AsSlice())
	}
	return r
}
