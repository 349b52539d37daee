package poddevices

import (
	"bufio"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/helperproc"
	"github.com/wgcni/wgcni/daemon/nodefile"
	"github.com/wgcni/wgcni/daemon/route"
	"github.com/wgcni/wgcni/daemon/samenode/registry"
	"github.com/wgcni/wgcni/daemon/tundev"
)

// podDev is one hosted pod device. Its private key exists only here, in
// this process's memory: it is never written anywhere.
type podDev struct {
	dev    *device.Device
	pub    wgtypes.Key
	port   int
	netns  string
	ifName string
}

// server carries the pod devices of one node (one process: Serve).
type server struct {
	log  *slog.Logger
	mu   sync.Mutex
	devs map[string]*podDev
}

// Serve is the body of `wgcnid samenode-host`: the process that carries
// every pod's userspace WireGuard device on this node — O(pods) goroutine
// sets, one process — and serves Socket. Readiness is reported on fd 3
// (helperproc).
func Serve(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet(Subcommand, flag.ContinueOnError)
	fs.SetOutput(stderr)
	runDir := fs.String("run-dir", nodefile.DefaultRunDir, "run dir (socket and pid file)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ready := helperproc.ReadyPipe()
	log := slog.New(slog.NewTextHandler(stderr, nil)).With("part", Subcommand, "pid", os.Getpid())
	fail := func(err error) int {
		log.Error("same-node pod device process failed", "err", err)
		ready.Fail(err)
		return 1
	}
	if err := os.MkdirAll(*runDir, 0o755); err != nil {
		return fail(err)
	}
	sock := Socket(*runDir)
	_ = os.Remove(sock) // stale from a killed process; the caller checked none answers
	old := unix.Umask(0o077)
	l, err := net.Listen("unix", sock)
	unix.Umask(old)
	if err != nil {
		return fail(fmt.Errorf("listen on %s: %w", sock, err))
	}
	if err := helperproc.WritePID(PIDFile(*runDir)); err != nil {
		l.Close()
		return fail(err)
	}
	h := &server{log: log, devs: map[string]*podDev{}}
	ready.Ready()
	log.Info("same-node pod device process running", "socket", sock)

	ctx, stop := helperproc.Lifetime()
	defer stop()
	go func() {
		<-ctx.Done()
		l.Close()
	}()
	for {
		c, err := l.Accept()
		if err != nil {
			break
		}
		go h.serve(c)
	}
	log.Info("stopping: closing every pod device", "devices", len(h.devs))
	h.mu.Lock()
	for id, d := range h.devs {
		d.dev.Close()
		delete(h.devs, id)
	}
	h.mu.Unlock()
	os.Remove(sock)
	os.Remove(PIDFile(*runDir))
	return 0
}

func (h *server) serve(c net.Conn) {
	defer c.Close()
	var req Request
	if err := json.NewDecoder(bufio.NewReader(c)).Decode(&req); err != nil {
		json.NewEncoder(c).Encode(Response{Error: "bad request: " + err.Error()})
		return
	}
	if req.Op == "watch" {
		// The daemon's death detector: acknowledge, then hold the
		// connection without ever writing again; it closes when this
		// process ends, however it ends.
		json.NewEncoder(c).Encode(Response{})
		io.Copy(io.Discard, c)
		return
	}
	resp, err := h.handle(req)
	if err != nil {
		resp = &Response{Error: err.Error()}
	}
	json.NewEncoder(c).Encode(resp)
}

func (h *server) handle(req Request) (*Response, error) {
	switch req.Op {
	case "ping":
		return &Response{}, nil
	case "list":
		h.mu.Lock()
		defer h.mu.Unlock()
		ids := make([]string, 0, len(h.devs))
		for id := range h.devs {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		return &Response{IDs: ids}, nil
	case "del":
		if err := registry.ValidID(req.ID); err != nil {
			return nil, err
		}
		h.mu.Lock()
		d := h.devs[req.ID]
		delete(h.devs, req.ID)
		h.mu.Unlock()
		if d != nil {
			// Closing waits for the device's goroutines; DEL need not. The
			// hub peer is already gone, so nothing reaches the device.
			go d.dev.Close() // closes the TUN: the pod's interface disappears
			h.log.Info("pod device removed", "id", req.ID)
		}
		return &Response{}, nil
	case "add":
		return h.add(req)
	}
	return nil, fmt.Errorf("unknown op %q", req.Op)
}

// add creates the pod's device: TUN inside the pod netns (created there on a
// thread switched into it), WireGuard state and UDP socket in this process,
// i.e. in the node netns. Idempotent for a repeated ADD.
func (h *server) add(req Request) (*Response, error) {
	if err := registry.ValidID(req.ID); err != nil {
		return nil, err
	}
	if req.Netns == "" || req.IfName == "" || len(req.IfName) > 15 {
		return nil, fmt.Errorf("add %s: netns and ifName (at most 15 chars) are required", req.ID)
	}
	hubKey, err := wgtypes.ParseKey(req.HubKey)
	if err != nil {
		return nil, fmt.Errorf("add %s: hub key: %w", req.ID, err)
	}
	if req.HubPort <= 0 || req.HubPort > 65535 {
		return nil, fmt.Errorf("add %s: hub port %d out of range", req.ID, req.HubPort)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if d, ok := h.devs[req.ID]; ok {
		if d.netns == req.Netns && d.ifName == req.IfName && alive(d) {
			return &Response{PublicKey: d.pub.String(), Port: d.port}, nil
		}
		d.dev.Close()
		delete(h.devs, req.ID)
	}
	var dev *device.Device
	dlog := &device.Logger{
		Verbosef: device.DiscardLogf,
		Errorf: func(format string, a ...any) {
			h.log.Error(fmt.Sprintf(format, a...), "id", req.ID)
		},
	}
	err = ns.WithNetNSPath(req.Netns, func(ns.NetNS) error {
		tdev, err := tun.CreateTUN(req.IfName, req.MTU)
		if err != nil {
			return fmt.Errorf("create TUN %s: %w", req.IfName, tundev.Explain(tundev.Path, err))
		}
		link, err := netlink.LinkByName(req.IfName)
		if err == nil {
			err = route.SetIPv6Enabled(req.IfName, false) // route.SetIPv6Enabled: why
		}
		if err == nil {
			err = netlink.LinkSetUp(link)
		}
		if err != nil {
			tdev.Close()
			return fmt.Errorf("set %s up: %w", req.IfName, err)
		}
		// NewDevice reads the MTU through an ioctl that resolves the name
		// in the calling thread's netns: call it here.
		dev = device.NewDevice(tdev, conn.NewDefaultBind(), dlog)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("add %s in %s: %w", req.ID, req.Netns, err)
	}
	priv, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		dev.Close()
		return nil, err
	}
	// Back on a node-netns thread: the socket the device binds lives in the
	// node netns, the peer (hub) is on loopback.
	cfg := fmt.Sprintf("private_key=%s\nlisten_port=0\nreplace_peers=true\npublic_key=%s\nendpoint=127.0.0.1:%d\nreplace_allowed_ips=true\nallowed_ip=0.0.0.0/0\nallowed_ip=::/0\n",
		hex.EncodeToString(priv[:]), hex.EncodeToString(hubKey[:]), req.HubPort)
	if err := dev.Up(); err != nil {
		dev.Close()
		return nil, fmt.Errorf("add %s: bring device up: %w", req.ID, err)
	}
	if err := dev.IpcSet(cfg); err != nil {
		dev.Close()
		return nil, fmt.Errorf("add %s: configure device: %w", req.ID, err)
	}
	port, err := listenPort(dev)
	if err != nil || port == 0 {
		dev.Close()
		return nil, fmt.Errorf("add %s: device has no UDP port: %v", req.ID, err)
	}
	// Pin the port: a later down/up of the interface must rebind to the
	// port the hub knows, not to a new random one.
	if err := dev.IpcSet(fmt.Sprintf("listen_port=%d\n", port)); err != nil {
		dev.Close()
		return nil, fmt.Errorf("add %s: pin port: %w", req.ID, err)
	}
	d := &podDev{dev: dev, pub: priv.PublicKey(), port: port, netns: req.Netns, ifName: req.IfName}
	h.devs[req.ID] = d
	// A pod netns that goes away destroys the TUN; wireguard-go then
	// closes the device. Forget it so a new ADD can reuse the id.
	go func() {
		<-dev.Wait()
		h.mu.Lock()
		if h.devs[req.ID] == d {
			delete(h.devs, req.ID)
			h.log.Info("pod device closed (interface gone)", "id", req.ID)
		}
		h.mu.Unlock()
	}()
	h.log.Info("pod device added", "id", req.ID, "netns", req.Netns, "ifname", req.IfName, "port", port, "public_key", d.pub.String())
	return &Response{PublicKey: d.pub.String(), Port: port}, nil
}

func alive(d *podDev) bool {
	select {
	case <-d.dev.Wait():
		return false
	default:
		return true
	}
}

func listenPort(dev *device.Device) (int, error) {
	s, err := dev.IpcGet()
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(s, "\n") {
		if v, ok := strings.CutPrefix(line, "listen_port="); ok {
			return strconv.Atoi(v)
		}
	}
	return 0, errors.New("no listen_port in device state")
}
