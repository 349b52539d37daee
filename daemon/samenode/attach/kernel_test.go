package attach

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/internal/netnstest"
	"github.com/wgcni/wgcni/daemon/samenode/hub"
	"github.com/wgcni/wgcni/daemon/samenode/registry"
	"github.com/wgcni/wgcni/daemon/wgdev"
)

func kernelHasWireGuard() bool {
	_, err := os.Stat("/sys/module/wireguard")
	return err == nil
}

// links lists the interfaces of the calling thread's netns but lo.
func links() ([]string, error) {
	ls, err := netlink.LinkList()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, l := range ls {
		if l.Attrs().Name != "lo" {
			out = append(out, l.Attrs().Name+"("+l.Type()+")")
		}
	}
	return out, nil
}

func kernelPod(t *testing.T) (node ns.NetNS, pod ns.NetNS, p *registry.Pod) {
	node, _ = netnstest.New(t, "snk-node")
	pod, podName := netnstest.New(t, "snk-pod")
	return node, pod, &registry.Pod{ID: "wgvkerneltest01", Netns: "/var/run/netns/" + podName, IfName: "eth0", WGIfName: WGIfName("eth0"), Mode: wgdev.Kernel}
}

// TestKernelPodDeviceWithoutModule: on a kernel without WireGuard (this
// machine) a kernel pod device fails with an error that names the missing
// module and the device, and leaves no link in the node or the pod.
func TestKernelPodDeviceWithoutModule(t *testing.T) {
	netnstest.RequireRoot(t)
	if kernelHasWireGuard() {
		t.Skip("this kernel has WireGuard; the failure cannot be observed (TestKernelPodDevice covers the path)")
	}
	node, pod, p := kernelPod(t)
	hubKey, _ := wgtypes.GeneratePrivateKey()
	err := node.Do(func(ns.NetNS) error {
		_, _, err := createDevice(t.TempDir(), p, hubKey.PublicKey(), 51821)
		if left, lerr := links(); lerr != nil || len(left) > 0 {
			return fmt.Errorf("node netns left with %v (%v); create err %v", left, lerr, err)
		}
		return err
	})
	if !errors.Is(err, wgdev.ErrKernelUnavailable) {
		t.Fatalf("kernel pod device without module: %v, want ErrKernelUnavailable", err)
	}
	for _, want := range []string{"wireguard kernel module", p.WGIfName, p.ID} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	t.Logf("error: %v", err)
	if err := pod.Do(func(ns.NetNS) error {
		if left, err := links(); err != nil || len(left) > 0 {
			return fmt.Errorf("pod netns has %v (%v)", left, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// Removing a kernel device that never came is not an error (DEL after
	// a failed ADD).
	if err := RemoveDevice(t.TempDir(), p.ID, p); err != nil {
		t.Fatalf("remove absent kernel device: %v", err)
	}
}

// TestPodDeviceMode: kernel is refused with the module named, auto falls
// back to userspace, userspace never probes; no probe link is left.
func TestPodDeviceMode(t *testing.T) {
	node, _ := netnstest.New(t, "snk-mode")
	log := slog.New(slog.DiscardHandler)
	probe := ProbeName("wgcni-wg")
	err := node.Do(func(ns.NetNS) error {
		auto, err := PodDeviceMode(wgdev.Auto, probe, log)
		if err != nil {
			return fmt.Errorf("auto: %w", err)
		}
		want := wgdev.Userspace
		if kernelHasWireGuard() {
			want = wgdev.Kernel
		}
		if auto != want {
			return fmt.Errorf("auto chose %s, want %s", auto, want)
		}
		if m, err := PodDeviceMode(wgdev.Userspace, probe, log); err != nil || m != wgdev.Userspace {
			return fmt.Errorf("userspace: %s %v", m, err)
		}
		kernel, kerr := PodDeviceMode(wgdev.Kernel, probe, log)
		if kernelHasWireGuard() {
			if kerr != nil || kernel != wgdev.Kernel {
				return fmt.Errorf("kernel with module: %s %v", kernel, kerr)
			}
		} else if !errors.Is(kerr, wgdev.ErrKernelUnavailable) || !strings.Contains(kerr.Error(), "wireguard kernel module") || !strings.Contains(kerr.Error(), "same-node pod devices") {
			return fmt.Errorf("kernel without module: %v", kerr)
		} else {
			t.Logf("kernel mode error: %v", kerr)
		}
		if left, err := links(); err != nil || len(left) > 0 {
			return fmt.Errorf("probe left %v (%v)", left, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := ProbeName("wgcni-wg"); len(got) > 15 || got == kernelTempName("wgcni-wg") {
		t.Errorf("probe name %q", got)
	}
}

// TestKernelPodDevice runs the kernel path where the kernel has WireGuard:
// the link ends up in the pod as wg-eth0, up, with the hub as only peer,
// while its UDP socket is in the node netns.
func TestKernelPodDevice(t *testing.T) {
	netnstest.RequireRoot(t)
	if !kernelHasWireGuard() {
		t.Skip("this kernel has no WireGuard module (TestKernelPodDeviceWithoutModule covers that)")
	}
	node, pod, p := kernelPod(t)
	hubKey, _ := wgtypes.GeneratePrivateKey()
	var pub wgtypes.Key
	var port int
	err := node.Do(func(ns.NetNS) error {
		var err error
		pub, port, err = createKernelDevice(p, hubKey.PublicKey(), 51821)
		if err != nil {
			return err
		}
		if left, err := links(); err != nil || len(left) > 0 {
			return fmt.Errorf("node netns has %v (%v): the link must have moved", left, err)
		}
		// The socket is here, in the node netns: the port is taken.
		if c, err := net.ListenUDP("udp4", &net.UDPAddr{Port: port}); err == nil {
			c.Close()
			return fmt.Errorf("UDP port %d is free in the node netns: the device's socket is elsewhere", port)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	err = pod.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(p.WGIfName)
		if err != nil {
			return err
		}
		if l.Type() != "wireguard" || l.Attrs().Flags&net.FlagUp == 0 || l.Attrs().MTU != hub.DeviceMTU {
			return fmt.Errorf("%s: type %s flags %v mtu %d", p.WGIfName, l.Type(), l.Attrs().Flags, l.Attrs().MTU)
		}
		wg, err := wgctrl.New()
		if err != nil {
			return err
		}
		defer wg.Close()
		d, err := wg.Device(p.WGIfName)
		if err != nil {
			return err
		}
		if d.PublicKey != pub || d.ListenPort != port || len(d.Peers) != 1 || d.Peers[0].PublicKey != hubKey.PublicKey() ||
			fmt.Sprint(d.Peers[0].Endpoint) != "127.0.0.1:51821" || len(d.Peers[0].AllowedIPs) != 2 {
			return fmt.Errorf("device state %+v", d)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := DeleteKernelDevice(p); err != nil {
		t.Fatal(err)
	}
	if up, err := KernelDeviceUp(p); err != nil || up {
		t.Fatalf("after delete: up=%v err=%v", up, err)
	}
}
