package reliability

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/wgcni/wgcni/ipam/nodeipam"
	"github.com/wgcni/wgcni/plugins/antispoof"
	"github.com/wgcni/wgcni/plugins/veth"
	"github.com/wgcni/wgcni/tests/harness"
)

// plugin runs the wgcni binary directly (as a runtime's libcni would) in
// the node namespace, so the test can SIGKILL it at any moment.
type plugin struct {
	t       *testing.T
	node    *harness.Node
	bin     string
	path    string
	conf    map[string]any // the wgcni entry of the node's conflist
	netName string
}

func newPlugin(t *testing.T, c *harness.Cluster, n *harness.Node) *plugin {
	t.Helper()
	name, conf, err := n.PluginConf()
	if err != nil {
		t.Fatal(err)
	}
	p := &plugin{t: t, node: n, bin: c.Bin("wgcni"), path: c.CNIPath(), netName: name, conf: conf}
	return p
}

func (p *plugin) stdin(extra map[string]any) []byte {
	m := map[string]any{"cniVersion": "1.1.0", "name": p.netName}
	for k, v := range p.conf {
		m[k] = v
	}
	for k, v := range extra {
		m[k] = v
	}
	b, _ := json.Marshal(m)
	return b
}

// start launches one plugin command; the caller waits (and may kill).
func (p *plugin) start(cmd, cid, netns, ifname string, extra map[string]any) (*exec.Cmd, *bytes.Buffer) {
	c := exec.Command(p.bin)
	c.Env = []string{"CNI_COMMAND=" + cmd, "CNI_CONTAINERID=" + cid, "CNI_NETNS=" + netns, "CNI_IFNAME=" + ifname, "CNI_PATH=" + p.path, "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
		// The plugin takes nothing from CNI_ARGS: hostile ones must not matter.
		"CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAME=x;IP=999.1.1.1;=;;garbage;K8S_POD_NAMESPACE=" + strings.Repeat("z", 300)}
	c.Stdin = bytes.NewReader(p.stdin(extra))
	var out bytes.Buffer
	c.Stdout, c.Stderr = &out, &out
	// Forked from a thread inside the node namespace, the plugin runs there.
	if err := p.node.Do(func() error { return c.Start() }); err != nil {
		p.t.Fatalf("start wgcni %s: %v", cmd, err)
	}
	return c, &out
}

func (p *plugin) run(cmd, cid, netns, ifname string, extra map[string]any) (string, error) {
	c, out := p.start(cmd, cid, netns, ifname, extra)
	err := c.Wait()
	return out.String(), err
}

type attachment struct{ cid, ifname string }

// TestNoLeaks runs WGCNI_LEAK_CYCLES (default 200) ADD/DEL cycles in which
// about a third of the ADDs are SIGKILLed after a random delay and some
// DELs are skipped (the runtime forgot the pod), keeps some pods, then runs
// CNI GC with the true list of attachments. Figures: leaked IPs, host
// veths, pod-side links and stale files (all 0). Then the node file is
// removed (daemon gone): DEL still succeeds; `wgcnid cleanup` keeps the
// node file while pods use the bridge and removes bridge, masquerade
// table and node file after the last pod.
func TestNoLeaks(t *testing.T) {
	cycles := envInt(t, "WGCNI_LEAK_CYCLES", 200)
	c := start(t, harness.Config{}, 1)
	n := c.Nodes()[0]
	pl := newPlugin(t, c, n)
	const poolSize = 4
	var pool []harness.NS
	for i := 0; i < poolSize; i++ {
		ns, err := c.NewNS(fmt.Sprintf("lk%d", i))
		if err != nil {
			t.Fatal(err)
		}
		pool = append(pool, ns)
	}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 6))
	kept := map[attachment]harness.NS{}
	forgot := map[attachment]bool{}
	var killed, killedDone, addOK, addFail, dels, skipped, delFail int
	t0 := time.Now()
	for i := 0; i < cycles; i++ {
		ns := pool[i%poolSize]
		a := attachment{cid: fmt.Sprintf("wgr-leak-%05d", i), ifname: fmt.Sprintf("e%d", i)}
		ok := false
		if rng.IntN(3) == 0 {
			cmd, _ := pl.start("ADD", a.cid, ns.Path(), a.ifname, nil)
			time.Sleep(time.Duration(rng.IntN(15000)) * time.Microsecond)
			_ = cmd.Process.Signal(syscall.SIGKILL)
			err := cmd.Wait()
			if err == nil {
				killedDone++ // finished before the kill
				ok = true
			} else {
				killed++
			}
		} else if out, err := pl.run("ADD", a.cid, ns.Path(), a.ifname, nil); err != nil {
			addFail++
			t.Errorf("ADD %s: %v %s", a.cid, err, out)
		} else {
			ok = true
		}
		if ok {
			addOK++
		}
		r := rng.IntN(10)
		switch {
		case ok && r == 0: // pod lives on: a valid attachment for GC
			kept[a] = ns
			continue
		case r == 1 || (!ok && r < 4): // runtime forgot the pod: no DEL
			skipped++
			forgot[a] = true
			continue
		}
		dels++
		if out, err := pl.run("DEL", a.cid, ns.Path(), a.ifname, nil); err != nil {
			delFail++
			t.Errorf("DEL %s: %v %s", a.cid, err, out)
		}
	}
	took := time.Since(t0)
	t.Logf("%d cycles in %v: %d ADDs killed mid-way (%d more finished before the kill), %d ADDs ok, %d failed; %d DELs (%d failed), %d skipped, %d pods kept",
		cycles, took.Round(time.Millisecond), killed, killedDone, addOK, addFail, dels, delFail, skipped, len(kept))

	leakedBefore := countLeaks(t, n, pl, pool, kept)
	// What DEL alone must have cleaned: everything but the kept and the
	// forgotten attachments.
	known := map[attachment]harness.NS{}
	for a, ns := range kept {
		known[a] = ns
	}
	for a := range forgot {
		known[a] = harness.NS{}
	}
	afterDel := countLeaks(t, n, pl, pool, known)
	var delLeft []string
	interrupted := 0
	for _, d := range afterDel.detail {
		// An empty address file names no attachment: an ADD killed
		// between reserving and writing the owner, which the next DEL's
		// sweep removes (nodeipam.removeInterrupted) — unless no DEL came
		// after it. GC takes it then; the after-GC figures below count it.
		if strings.HasPrefix(d, "IP ") && strings.HasSuffix(d, " of /") {
			interrupted++
			continue
		}
		if strings.HasPrefix(d, "IP ") || strings.HasPrefix(d, "veth ") {
			delLeft = append(delLeft, d)
		}
	}
	t.Logf("left behind by completed DELs (before GC): %d IPs, %d host veths %v; %d interrupted reservations after the last DEL", afterDel.ips-interrupted, afterDel.veths, delLeft, interrupted)
	if afterDel.ips-interrupted+afterDel.veths != 0 {
		t.Errorf("DEL left %d IPs and %d veths of attachments it was called for", afterDel.ips-interrupted, afterDel.veths)
	}
	valid := []map[string]string{}
	for a := range kept {
		valid = append(valid, map[string]string{"containerID": a.cid, "ifname": a.ifname})
	}
	if out, err := pl.run("GC", "", "", "", map[string]any{"cni.dev/valid-attachments": valid}); err != nil {
		t.Fatalf("GC: %v %s", err, out)
	}
	l := countLeaks(t, n, pl, pool, kept)
	t.Logf("before GC: %s", leakedBefore)
	t.Logf("after GC with the %d true attachments: %s", len(kept), l)
	if l.total() != 0 {
		t.Errorf("leaks after GC: %s", l)
	}
	if l.missing != 0 {
		t.Errorf("%d kept pods lost their IP or veth", l.missing)
	}

	// Known gap (a): the daemon is gone and its node file with it.
	nodeFile := filepath.Join(n.RunDir, "node.json")
	saved, err := os.ReadFile(nodeFile)
	if err != nil {
		t.Fatal(err)
	}
	var one attachment
	for a := range kept {
		one = a
		break
	}
	delNoNode := "skipped (no kept pod)"
	if one.cid != "" {
		os.Rename(nodeFile, nodeFile+".away")
		out, err := pl.run("DEL", one.cid, kept[one].Path(), one.ifname, nil)
		if err != nil {
			t.Errorf("DEL without node file: %v %s", err, out)
		}
		os.Rename(nodeFile+".away", nodeFile)
		if hostVeths(t, n)[veth.HostName(veth.Attachment{Network: pl.netName, ContainerID: one.cid, IfName: one.ifname})] {
			t.Errorf("DEL without node file left the host veth")
		}
		delete(kept, one)
		delNoNode = fmt.Sprintf("ok=%v", err == nil)
	}
	// cleanup while pods use the bridge keeps the node file (and masq).
	if len(kept) > 0 {
		if out, err := n.Cleanup(); err != nil {
			t.Fatalf("wgcnid cleanup: %v %s", err, out)
		}
		if _, err := os.Stat(nodeFile); err != nil {
			t.Errorf("cleanup removed the node file while %d pods use the bridge", len(kept))
		}
		for a, ns := range kept {
			if out, err := pl.run("DEL", a.cid, ns.Path(), a.ifname, nil); err != nil {
				t.Errorf("DEL after cleanup: %v %s", err, out)
			}
		}
	} else {
		_ = saved
	}
	if out, err := n.Cleanup(); err != nil {
		t.Fatalf("wgcnid cleanup: %v %s", err, out)
	}
	_, nfErr := os.Stat(nodeFile)
	masqOut, _ := n.Exec("nft", "list", "tables")
	var brGone bool
	n.Do(func() error {
		_, err := netlink.LinkByName("wgcni0")
		brGone = err != nil
		return nil
	})
	if nfErr == nil || strings.Contains(masqOut, "wgcni") || !brGone {
		t.Errorf("after the last pod, cleanup left: node file=%v, nft tables=%q, bridge=%v", nfErr == nil, masqOut, !brGone)
	}
	harness.Result(t, "%d ADD/DEL cycles, %d ADDs SIGKILLed mid-way, %d DELs skipped: after GC %d leaked IPs, %d host veths, %d pod links, %d stale files; DEL without node file %s; cleanup keeps node file while pods exist, then removes bridge+masq+node file",
		cycles, killed, skipped, l.ips, l.veths, l.podLinks, l.files, delNoNode)
}

type leaks struct {
	ips, veths, podLinks, files, missing int
	// elements: anti-spoofing elements of ports that are gone. DEL leaves
	// them (they match nothing, plugins/antispoof); GC and wgcnid sweep.
	elements int
	detail   []string
}

func (l leaks) total() int { return l.ips + l.veths + l.podLinks + l.files + l.elements }
func (l leaks) String() string {
	s := fmt.Sprintf("%d leaked IPs, %d host veths, %d pod-side links, %d stale files, %d anti-spoofing elements of gone ports, %d kept pods incomplete", l.ips, l.veths, l.podLinks, l.files, l.elements, l.missing)
	if len(l.detail) > 0 {
		d := l.detail
		if len(d) > 10 {
			d = d[:10]
		}
		s += " " + strings.Join(d, "; ")
	}
	return s
}

func hostVeths(t *testing.T, n *harness.Node) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	err := n.Do(func() error {
		links, err := netlink.LinkList()
		for _, l := range links {
			if veth.IsHostName(l.Attrs().Name) || l.Type() == "veth" && l.Attrs().Name != "eth0" {
				out[l.Attrs().Name] = true
			}
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// countLeaks compares the node with the kept attachments: IP files in the
// IPAM store, host veths, links in the pod namespaces, and files that are
// neither allocations nor the store's own bookkeeping.
func countLeaks(t *testing.T, n *harness.Node, pl *plugin, pool []harness.NS, kept map[attachment]harness.NS) leaks {
	t.Helper()
	var l leaks
	nf, err := n.NodeFile()
	if err != nil {
		t.Fatal(err)
	}
	storeDir := filepath.Join(nf.IPAMDir, pl.netName)
	allocs, err := nodeipam.List(storeDir)
	if err != nil {
		t.Fatal(err)
	}
	haveIP := map[attachment]bool{}
	for _, a := range allocs {
		at := attachment{a.ContainerID, a.IfName}
		if _, ok := kept[at]; !ok {
			l.ips++
			l.detail = append(l.detail, fmt.Sprintf("IP %s of %s/%s", a.IP, a.ContainerID, a.IfName))
		}
		haveIP[at] = true
	}
	ents, _ := os.ReadDir(storeDir)
	for _, e := range ents {
		name := e.Name()
		if net.ParseIP(name) != nil || name == "lock" || strings.HasPrefix(name, "last_reserved_ip.") {
			continue
		}
		l.files++
		l.detail = append(l.detail, "file "+filepath.Join(storeDir, name))
	}
	for _, dir := range []string{n.RunDir, n.StateDir} {
		filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() && (strings.Contains(d.Name(), ".tmp") || strings.HasPrefix(d.Name(), ".")) {
				l.files++
				l.detail = append(l.detail, "temp file "+p)
			}
			return nil
		})
	}
	want := map[string]bool{}
	for a, ns := range kept {
		if ns.Name == "" {
			continue // forgotten: may or may not hold anything
		}
		want[veth.HostName(veth.Attachment{Network: pl.netName, ContainerID: a.cid, IfName: a.ifname})] = true
		if !haveIP[a] {
			l.missing++
		}
	}
	for a, ns := range kept {
		if ns.Name == "" {
			want[veth.HostName(veth.Attachment{Network: pl.netName, ContainerID: a.cid, IfName: a.ifname})] = true
		}
	}
	have := hostVeths(t, n)
	for name := range have {
		if !want[name] {
			l.veths++
			l.detail = append(l.detail, "veth "+name)
		}
	}
	for a, ns := range kept {
		if name := veth.HostName(veth.Attachment{Network: pl.netName, ContainerID: a.cid, IfName: a.ifname}); ns.Name != "" && !have[name] {
			l.missing++
		}
	}
	var allowed []string
	if err := n.Do(func() error {
		var err error
		allowed, err = antispoof.Allowed()
		return err
	}); err != nil {
		t.Fatalf("list anti-spoofing elements: %v", err)
	}
	allowedPort := map[string]bool{}
	for _, e := range allowed {
		port, _, _ := strings.Cut(e, " ")
		allowedPort[port] = true
		if strings.HasPrefix(port, "#") {
			l.elements++
			l.detail = append(l.detail, "anti-spoofing element "+e)
		}
	}
	for a, ns := range kept {
		if name := veth.HostName(veth.Attachment{Network: pl.netName, ContainerID: a.cid, IfName: a.ifname}); ns.Name != "" && have[name] && !allowedPort[name] {
			l.missing++
			l.detail = append(l.detail, "no anti-spoofing element for kept pod "+name)
		}
	}
	keptIf := map[string]bool{}
	for a, ns := range kept {
		keptIf[ns.Name+"/"+a.ifname] = true
	}
	for _, ns := range pool {
		var names []string
		ns.Do(func() error {
			links, err := netlink.LinkList()
			for _, k := range links {
				names = append(names, k.Attrs().Name)
			}
			return err
		})
		sort.Strings(names)
		for _, name := range names {
			if name != "lo" && !keptIf[ns.Name+"/"+name] {
				l.podLinks++
				l.detail = append(l.detail, "pod link "+ns.Name+"/"+name)
			}
		}
	}
	return l
}
