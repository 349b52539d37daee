// Package podnet implements the wgcni plugin's CNI commands: it wires a pod
// into the node bridge (veth, address, default route via the node gateway,
// MTU from the node file) and takes it out again. The node file written by
// wgcnid is the only node state it reads; it never talks to etcd.
package podnet

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/ipam"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/wgcni/wgcni/daemon/nodefile"

	"github.com/wgcni/wgcni/plugins/antispoof"
	"github.com/wgcni/wgcni/plugins/bridge"
	"github.com/wgcni/wgcni/plugins/masq"
	"github.com/wgcni/wgcni/plugins/netconf"
	"github.com/wgcni/wgcni/plugins/veth"
)

// Plugin carries what the commands need besides their arguments.
type Plugin struct {
	Log *slog.Logger
}

// Indexes of the interfaces in an ADD result, in the order the reference
// bridge plugin uses: bridge, host veth, pod interface.
const (
	ifBridge = iota
	ifHost
	ifPod
)

// readNode loads the node file, turning "no file" into CNI code 11 (the
// runtime retries once wgcnid holds a lease) and a corrupt file into an
// error naming the field.
func readNode(runDir string) (*nodefile.Node, error) {
	n, err := nodefile.Read(runDir)
	if errors.Is(err, nodefile.ErrNoLease) {
		return nil, types.NewError(types.ErrTryAgainLater, "wgcni: the node daemon has no lease yet: "+err.Error(), "start wgcnid and wait for it to write "+nodefile.Path(runDir))
	}
	if err != nil {
		return nil, types.NewError(types.ErrTryAgainLater, "wgcni: unusable node file "+nodefile.Path(runDir)+": "+err.Error(), "")
	}
	return n, nil
}

func attachment(conf *netconf.NetConf, args *skel.CmdArgs) veth.Attachment {
	return veth.Attachment{Network: conf.Name, ContainerID: args.ContainerID, IfName: args.IfName}
}

func openNS(path string) (ns.NetNS, error) {
	if path == "" {
		return nil, types.NewError(types.ErrInvalidEnvironmentVariables, "CNI_NETNS is empty", "")
	}
	podNS, err := ns.GetNS(path)
	if err != nil {
		return nil, types.NewError(types.ErrInvalidNetNS, fmt.Sprintf("open pod netns CNI_NETNS=%q: %v", path, err), "")
	}
	return podNS, nil
}

// parse decodes the network config and prepares its IPAM, the first
// step of every command that touches addresses.
func (p *Plugin) parse(args *skel.CmdArgs) (*netconf.NetConf, ipamClient, error) {
	conf, err := netconf.Parse(args.StdinData)
	if err != nil {
		return nil, nil, err
	}
	ipm, err := newIPAM(conf.IPAMType, args, p.Log)
	if err != nil {
		return nil, nil, err
	}
	return conf, ipm, nil
}

// Add implements CNI ADD. Everything it creates is undone if a later step
// fails: the veth pair is deleted and the IPAM allocation released.
func (p *Plugin) Add(args *skel.CmdArgs) error {
	// For wgcni-ipam this also validates the ipam section, before anything
	// is created.
	conf, ipm, err := p.parse(args)
	if err != nil {
		return err
	}
	node, err := readNode(conf.RunDir)
	if err != nil {
		return err
	}
	fams, err := node.Families() // validated by nodefile.Read
	if err != nil {
		return types.NewError(types.ErrTryAgainLater, "wgcni: unusable node file "+nodefile.Path(conf.RunDir)+": "+err.Error(), "")
	}
	mtu := node.MTU
	if conf.MTU > 0 {
		mtu = conf.MTU
	}

	podNS, err := openNS(args.Netns)
	if err != nil {
		return err
	}
	defer podNS.Close()

	br, err := bridge.Ensure(node.Bridge, node.MTU, gateways(fams)...)
	if err != nil {
		return fmt.Errorf("wgcni: ensure bridge %s: %w", node.Bridge, err)
	}

	att := attachment(conf, args)
	hostMAC, podMAC := veth.RandomMAC(), veth.RandomMAC()
	pair, err := veth.Create(att, podNS, br.Attrs().Index, mtu, conf.HairpinMode, hostMAC, podMAC)
	if err != nil {
		return fmt.Errorf("wgcni: %w", err)
	}
	success := false
	defer func() {
		if !success {
			if err := veth.DeleteHost(pair.HostName); err != nil {
				p.Log.Error("rollback: delete veth", "veth", pair.HostName, "err", err)
			}
		}
	}()

	r, err := ipm.Add()
	if err != nil {
		return err
	}
	defer func() {
		if !success {
			if err := ipm.Del(); err != nil {
				p.Log.Error("rollback: release IP", "ipam", conf.IPAMType, "err", err)
			}
		}
	}()
	ipamRes, err := current.NewResultFromResult(r)
	if err != nil {
		return fmt.Errorf("wgcni: convert result of IPAM plugin %s: %w", conf.IPAMType, err)
	}
	if len(ipamRes.IPs) == 0 {
		return fmt.Errorf("wgcni: IPAM plugin %s returned no IP", conf.IPAMType)
	}

	result := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			ifBridge: {Name: node.Bridge, Mac: br.Attrs().HardwareAddr.String()},
			ifHost:   {Name: pair.HostName, Mac: hostMAC.String()},
			ifPod:    {Name: args.IfName, Mac: podMAC.String(), Sandbox: args.Netns},
		},
		Routes: ipamRes.Routes,
		DNS:    ipamRes.DNS,
	}
	used, err := addIPs(result, ipamRes.IPs, fams, conf.IPAMType)
	if err != nil {
		return err
	}

	if err := podNS.Do(func(ns.NetNS) error {
		if slices.ContainsFunc(used, nodefile.Family.Is6) {
			if err := podIPv6Sysctls(args.IfName); err != nil {
				return err
			}
		}
		return ipam.ConfigureIface(args.IfName, result)
	}); err != nil {
		return fmt.Errorf("wgcni: configure %s in %s: %w", args.IfName, args.Netns, err)
	}
	if node.SameNodeEncryption {
		if err := p.attachSameNode(node, conf, args, pair.HostName, result, mtu); err != nil {
			return err
		}
		defer func() {
			if !success {
				if err := rollbackSameNode(node, conf.RunDir, pair.HostName); err != nil {
					p.Log.Error("rollback: same-node detach", "id", pair.HostName, "err", err)
				}
			}
		}()
	}

	// The pod may send only from its own IP and MAC (bridge-port filter).
	var podIPs []net.IP
	for _, ipc := range result.IPs {
		podIPs = append(podIPs, ipc.Address.IP)
	}
	port := antispoof.Port{Name: pair.HostName, Index: pair.HostIndex}
	if err := antispoof.Allow(port, podMAC, podIPs); err != nil {
		return fmt.Errorf("wgcni: %w", err)
	}
	defer func() {
		if !success {
			if err := antispoof.Revoke(port.Index); err != nil {
				p.Log.Error("rollback: anti-spoofing entry", "veth", pair.HostName, "err", err)
			}
		}
	}()

	for _, f := range used {
		if err := ensureForwarding(f); err != nil {
			return fmt.Errorf("wgcni: %w", err)
		}
		if conf.IPMasq {
			if err := masq.Ensure(f.Pod, f.Cluster); err != nil {
				return fmt.Errorf("wgcni: %w", err)
			}
		}
	}
	if dnsSet(conf.DNS) {
		result.DNS = conf.DNS
	}
	// Interface MTUs are a CNI 1.1 field; the 1.0 result type shares the
	// Go struct, so older versions would otherwise carry it too.
	if v11, _ := version.GreaterThanOrEqualTo(conf.CNIVersion, "1.1.0"); v11 {
		result.Interfaces[ifHost].Mtu = mtu
		result.Interfaces[ifPod].Mtu = mtu
	}
	success = true
	return types.PrintResult(result, conf.CNIVersion)
}

// Del implements CNI DEL. It succeeds when the netns, the veth or the IP
// allocation are already gone, and always asks IPAM to release.
//
// The pod's anti-spoofing elements stay: they are keyed by the host veth's
// interface index, which no later port gets, so once the veth is gone they
// match nothing, and wgcnid's resync sweeps them (see plugins/antispoof).
// Deleting them here cost every DEL an RCU grace period under nf_tables'
// commit mutex, which concurrent DELs queued on (docs/performance.md §4).
func (p *Plugin) Del(args *skel.CmdArgs) error {
	conf, ipm, err := p.parse(args)
	if err != nil {
		return err
	}
	port := veth.HostName(attachment(conf, args))
	var errs []error
	deleted := false
	if args.Netns != "" {
		err := ns.WithNetNSPath(args.Netns, func(ns.NetNS) error {
			var err error
			deleted, err = veth.DeleteInNS(args.IfName)
			return err
		})
		var gone ns.NSPathNotExistErr
		if err != nil && !errors.As(err, &gone) {
			errs = append(errs, fmt.Errorf("wgcni: delete %s in %s: %w", args.IfName, args.Netns, err))
		}
	}
	// The pod end may be unreachable (netns unmounted but still alive):
	// the host end, found by its deterministic name, takes the pair down.
	// Skipped when the pod end was just deleted, which took the pair.
	if !deleted {
		if err := veth.DeleteHost(port); err != nil {
			errs = append(errs, fmt.Errorf("wgcni: %w", err))
		}
	}
	if err := p.detachSameNode(conf, args); err != nil {
		errs = append(errs, err)
	}
	if err := ipm.Del(); err != nil {
		var cniErr *types.Error
		if len(errs) == 0 && errors.As(err, &cniErr) {
			return cniErr
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Status implements CNI STATUS: code 50 until wgcnid has written the node
// file, then whatever the IPAM plugin says.
func (p *Plugin) Status(args *skel.CmdArgs) error {
	conf, ipm, err := p.parse(args)
	if err != nil {
		return err
	}
	if _, err := nodefile.Read(conf.RunDir); err != nil {
		return types.NewError(types.ErrPluginNotAvailable, "wgcni: not ready: "+err.Error(), "")
	}
	return ipm.Status()
}

// GC implements CNI GC: IPAM releases every IP whose attachment is not in
// cni.dev/valid-attachments, and host veths tagged for this network whose
// attachment is not listed are deleted.
func (p *Plugin) GC(args *skel.CmdArgs) error {
	conf, err := netconf.Parse(args.StdinData)
	if err != nil {
		return err
	}
	if !conf.HasValidAttachments {
		return netconf.Invalid("field cni.dev/valid-attachments: missing; refusing to garbage-collect without the list of valid attachments")
	}
	ipm, err := newIPAM(conf.IPAMType, args, p.Log)
	if err != nil {
		return err
	}
	var errs []error
	if err := ipm.GC(); err != nil {
		errs = append(errs, fmt.Errorf("wgcni: GC of IPAM plugin %s: %w", conf.IPAMType, err))
	}
	valid := make(map[veth.Attachment]bool, len(conf.ValidAttachments))
	for _, a := range conf.ValidAttachments {
		valid[veth.Attachment{Network: conf.Name, ContainerID: a.ContainerID, IfName: a.IfName}] = true
	}
	tagged, untagged, err := veth.Owned(conf.Name)
	if err != nil {
		errs = append(errs, fmt.Errorf("wgcni: GC: %w", err))
	}
	errs = append(errs, p.gcSameNode(conf, valid)...)
	for name, a := range tagged {
		if valid[a] {
			continue
		}
		if err := veth.DeleteHost(name); err != nil {
			errs = append(errs, fmt.Errorf("wgcni: GC: %w", err))
			continue
		}
		p.Log.Info("GC removed orphaned veth", "veth", name, "containerID", a.ContainerID, "ifname", a.IfName)
	}
	// An untagged veth with our name pattern is an ADD that died between
	// creating and tagging the pair; keep it only if its name is that of
	// a valid attachment (whose ADD may still be running).
	validNames := make(map[string]bool, len(valid))
	for a := range valid {
		validNames[veth.HostName(a)] = true
	}
	for _, name := range untagged {
		if validNames[name] {
			continue
		}
		if err := veth.DeleteHost(name); err != nil {
			errs = append(errs, fmt.Errorf("wgcni: GC: %w", err))
			continue
		}
		p.Log.Info("GC removed untagged orphaned veth", "veth", name)
	}
	// Anti-spoofing elements of ports that no longer exist.
	if _, err := antispoof.Sweep(); err != nil {
		errs = append(errs, fmt.Errorf("wgcni: GC: %w", err))
	}
	return errors.Join(errs...)
}

func dnsSet(d types.DNS) bool {
	return d.Nameservers != nil || d.Search != nil || d.Options != nil || d.Domain != ""
}
