// Package wgdev provides the node's WireGuard device in either flavour —
// kernel WireGuard (netlink link type "wireguard") or userspace WireGuard
// (golang.zx2c4.com/wireguard in a detached helper process) — behind one
// interface: both are configured and read through wgctrl. An existing
// device is always adopted, never deleted and recreated, so a daemon
// restart does not drop a packet.
package wgdev

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Mode is the WireGuard implementation behind a device.
type Mode string

// Implementations, and "auto" (kernel if the kernel has it, else userspace).
const (
	Auto      Mode = "auto"
	Kernel    Mode = "kernel"
	Userspace Mode = "userspace"
)

// SocketDir is where userspace WireGuard puts its UAPI sockets (fixed by
// wireguard-go and wgctrl); it is shared by all network namespaces.
const SocketDir = "/var/run/wireguard"

// SocketPath returns the UAPI socket of a userspace device.
func SocketPath(name string) string { return filepath.Join(SocketDir, name+".sock") }

// PIDFile returns the pid file of the process hosting userspace device name.
func PIDFile(runDir, name string) string { return filepath.Join(runDir, name+".pid") }

// Options says which device to ensure.
type Options struct {
	Name   string
	MTU    int
	Want   Mode
	RunDir string // pid and log files of the userspace host process
	// Exe and Args run the userspace host process: Exe Args... --name N
	// --mtu M --run-dir D. Default: /proc/self/exe userspace-device.
	Exe  string
	Args []string
	Env  []string // extra environment for the host process
	// Verbose makes a new userspace host log WireGuard's own events
	// (handshakes sent/received, keypairs, timers) to its log file: the
	// record operators need when a peer does not come up. Off by default,
	// as it logs a line per handshake.
	Verbose bool
	// External: the userspace device is run by something else (a sidecar
	// container running `wgcnid userspace-device`); Ensure adopts it and
	// never creates one, failing with ErrNotHosted while it is missing.
	External bool
	// SocketWait bounds how long a TUN with our name may lack its UAPI
	// socket before it is taken for a foreign device (default
	// DefaultSocketWait).
	SocketWait time.Duration
	Log        *slog.Logger
}

// DefaultSocketWait is how long a TUN with the device's name may exist
// without a listening UAPI socket. A userspace host creates its TUN first
// and starts listening right after (wireguard-go cannot do it the other
// way round): milliseconds on an idle machine, but a host that has just
// started — a sidecar container coming up, a respawn on a loaded node —
// can be descheduled in between. Past this, the TUN belongs to something
// else or its host hung, and an operator must look.
const DefaultSocketWait = 5 * time.Second

// Device is an ensured WireGuard device.
type Device struct {
	Name    string
	Index   int
	Mode    Mode
	Adopted bool // it existed before Ensure
	PID     int  // userspace host process, 0 for kernel devices
}

// ErrNotHosted means an external device host has not created the device
// (yet): the caller waits for it.
var ErrNotHosted = errors.New("the userspace WireGuard device is not there; its external host (--device-host=external) has not created it")

// ErrKernelUnavailable means the kernel cannot create WireGuard links
// (no module, or not permitted).
var ErrKernelUnavailable = errors.New("kernel WireGuard is not available")

// Ensure returns the device named o.Name, adopting it if it exists and
// creating it otherwise, then sets its MTU and brings it up.
func Ensure(o Options) (*Device, error) {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	d, err := adopt(o)
	if err != nil {
		return nil, err
	}
	if d == nil && o.External {
		return nil, fmt.Errorf("WireGuard device %s: %w", o.Name, ErrNotHosted)
	}
	if d == nil {
		d, err = create(o)
		if err != nil {
			return nil, err
		}
	}
	link, err := netlink.LinkByName(o.Name)
	if err != nil {
		return nil, fmt.Errorf("look up WireGuard device %s: %w", o.Name, err)
	}
	d.Index = link.Attrs().Index
	if o.MTU > 0 && link.Attrs().MTU != o.MTU {
		if err := netlink.LinkSetMTU(link, o.MTU); err != nil {
			return nil, fmt.Errorf("set MTU %d on WireGuard device %s: %w", o.MTU, o.Name, err)
		}
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := netlink.LinkSetUp(link); err != nil {
			return nil, fmt.Errorf("set WireGuard device %s up: %w", o.Name, err)
		}
	}
	return d, nil
}

// adopt returns the existing device, or nil if there is none.
func adopt(o Options) (*Device, error) {
	link, err := netlink.LinkByName(o.Name)
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("look up WireGuard device %s: %w", o.Name, err)
	}
	switch link.Type() {
	case "wireguard":
		if o.Want == Userspace {
			o.Log.Warn("adopting existing kernel WireGuard device although --wireguard=userspace; delete it (wgcnid cleanup) to switch", "device", o.Name)
		}
		return &Device{Name: o.Name, Mode: Kernel, Adopted: true}, nil
	case "tuntap", "tun":
		if o.Want == Kernel {
			o.Log.Warn("adopting existing userspace WireGuard device although --wireguard=kernel; delete it (wgcnid cleanup) to switch", "device", o.Name)
		}
		// A TUN lives only as long as its process holds it, so a TUN with
		// our name is either our host process (perhaps still starting) or
		// something foreign.
		if err := awaitUserspace(o); err != nil {
			return nil, err
		}
		pid, _ := readPID(PIDFile(o.RunDir, o.Name))
		return &Device{Name: o.Name, Mode: Userspace, Adopted: true, PID: pid}, nil
	default:
		return nil, fmt.Errorf("interface %s exists but is a %s device, not WireGuard; choose another --device", o.Name, link.Type())
	}
}

// awaitUserspace waits, up to o.SocketWait, for the UAPI socket of a TUN
// that has our device's name: until then the device is "not hosted yet",
// not foreign.
func awaitUserspace(o Options) error {
	wait := o.SocketWait
	if wait <= 0 {
		wait = DefaultSocketWait
	}
	deadline := time.Now().Add(wait)
	for {
		err := probeUserspace(o.Name)
		if err == nil {
			return nil
		}
		starting := errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED)
		if !starting || time.Now().After(deadline) {
			return fmt.Errorf("device %s exists as a TUN device but is not a working userspace WireGuard device (no UAPI socket answered within %s: another program's TUN, or its WireGuard host hung while starting; remove it or choose another --device): %w",
				o.Name, wait, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func create(o Options) (*Device, error) {
	var d *Device
	mode, err := Choose(o.Want,
		func() error { return CreateKernel(o.Name, o.MTU) },
		func() error {
			var err error
			d, err = createUserspace(o)
			return err
		}, o.Log.With("device", o.Name))
	if err != nil {
		return nil, err
	}
	if mode == Kernel {
		d = &Device{Name: o.Name, Mode: Kernel}
	}
	return d, nil
}

// Choose is the one rule for which WireGuard a device wgcni makes gets
// (the node device, the same-node hub, pods' same-node devices): kernel()
// for Kernel, userspace() for Userspace, and for Auto kernel() first,
// falling back to userspace() only when kernel() fails with
// ErrKernelUnavailable — any other kernel failure is a real error, not a
// reason to run slower. It returns the mode that succeeded.
func Choose(want Mode, kernel, userspace func() error, log *slog.Logger) (Mode, error) {
	switch want {
	case Kernel:
		return Kernel, kernel()
	case Userspace:
		return Userspace, userspace()
	case Auto, "":
		err := kernel()
		if err == nil {
			return Kernel, nil
		}
		if !errors.Is(err, ErrKernelUnavailable) {
			return Kernel, err
		}
		if log != nil {
			log.Info("kernel WireGuard unavailable; using userspace WireGuard", "reason", err)
		}
		return Userspace, userspace()
	default:
		return "", fmt.Errorf("unknown WireGuard mode %q (want auto, kernel or userspace)", want)
	}
}

// kernelLink is the netlink request for a kernel WireGuard device.
func kernelLink(name string, mtu int) *netlink.Wireguard {
	la := netlink.NewLinkAttrs()
	la.Name = name
	if mtu > 0 {
		la.MTU = mtu
	}
	return &netlink.Wireguard{LinkAttrs: la}
}

// CreateKernel creates a kernel WireGuard link name in the calling
// thread's netns (an existing one is fine). Without WireGuard in the kernel
// the error wraps ErrKernelUnavailable and names the missing module.
func CreateKernel(name string, mtu int) error {
	err := netlink.LinkAdd(kernelLink(name, mtu))
	if err == nil || errors.Is(err, syscall.EEXIST) {
		return nil
	}
	return classifyKernelErr(name, err)
}

// ProbeKernel reports whether kernel WireGuard links can be made here, by
// creating link name and deleting it again; the error is CreateKernel's.
func ProbeKernel(name string) error {
	if _, err := netlink.LinkByName(name); err == nil {
		return fmt.Errorf("probe kernel WireGuard: interface %s already exists", name)
	}
	if err := CreateKernel(name, 0); err != nil {
		return err
	}
	if l, err := netlink.LinkByName(name); err == nil {
		if err := netlink.LinkDel(l); err != nil {
			return fmt.Errorf("probe kernel WireGuard: delete probe link %s: %w", name, err)
		}
	}
	return nil
}

// classifyKernelErr turns the errors a kernel without WireGuard returns
// into ErrKernelUnavailable, so auto mode can fall back.
func classifyKernelErr(name string, err error) error {
	// EOPNOTSUPP: rtnetlink has no "wireguard" link kind (module absent and
	// not auto-loadable). EPERM/EACCES: not allowed to create links here.
	if errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, syscall.ENOTSUP) || errors.Is(err, syscall.EPERM) ||
		errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EAFNOSUPPORT) {
		return fmt.Errorf("%w: create link %s of type wireguard: %w (is the wireguard kernel module loaded? use --wireguard=userspace or auto)", ErrKernelUnavailable, name, err)
	}
	return fmt.Errorf("create kernel WireGuard device %s: %w", name, err)
}

// Configure sets the private key and listen port, changing only what
// differs: re-setting listen_port makes userspace WireGuard rebind its
// socket, which would drop packets on every daemon restart.
func Configure(wg *wgctrl.Client, name string, key wgtypes.Key, port int) error {
	dev, err := wg.Device(name)
	if err != nil {
		return fmt.Errorf("read WireGuard device %s: %w", name, err)
	}
	var cfg wgtypes.Config
	changed := false
	if dev.PrivateKey != key {
		cfg.PrivateKey = &key
		changed = true
	}
	if dev.ListenPort != port {
		cfg.ListenPort = &port
		changed = true
	}
	if !changed {
		return nil
	}
	if err := wg.ConfigureDevice(name, cfg); err != nil {
		return fmt.Errorf("set key/listen port %d on WireGuard device %s: %w", port, name, err)
	}
	return nil
}

// Remove deletes the device: the userspace host process is stopped (which
// removes its TUN and socket), a kernel link is deleted. Missing is fine.
func Remove(runDir, name string, log *slog.Logger) error {
	var errs []error
	pidFile := PIDFile(runDir, name)
	if pid, err := readPID(pidFile); err == nil {
		if err := stopDeviceProcess(pid, name); err != nil {
			errs = append(errs, err)
		} else {
			log.Info("stopped userspace WireGuard process", "device", name, "pid", pid)
		}
	}
	if err := os.Remove(pidFile); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove pid file: %w", err))
	}
	if link, err := netlink.LinkByName(name); err == nil {
		if link.Type() == "wireguard" || link.Type() == "tuntap" || link.Type() == "tun" {
			if err := netlink.LinkDel(link); err != nil {
				errs = append(errs, fmt.Errorf("delete WireGuard device %s: %w", name, err))
			}
		} else {
			errs = append(errs, fmt.Errorf("interface %s is a %s device, not ours; left in place", name, link.Type()))
		}
	}
	return errors.Join(errs...)
}
