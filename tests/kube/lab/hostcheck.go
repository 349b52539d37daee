package lab

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// HostState is what the lab must leave as it found it on the machine:
// the machine-wide sysctls kubelet and kube-proxy like to change, the
// host paths Kubernetes and CNI write to, and the cgroup hierarchies.
type HostState map[string]string

// hostPaths are listed (names, not contents) before and after.
var hostPaths = []string{"/etc/cni/net.d", "/opt/cni/bin", "/var/lib/kubelet", "/etc/kubernetes", "/var/lib/wgcni", "/run/wgcni", "/var/lib/cni"}

// machineSysctls are machine-wide (not per network namespace).
var machineSysctls = []string{"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
	"kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes", "net/netfilter/nf_conntrack_max", "fs/inotify/max_user_instances"}

// SnapshotHost records the machine's state.
func SnapshotHost() HostState {
	s := HostState{}
	for _, k := range machineSysctls {
		b, err := os.ReadFile("/proc/sys/" + k)
		s["sysctl "+k] = strings.TrimSpace(string(b)) + errString(err)
	}
	for _, p := range hostPaths {
		ents, err := os.ReadDir(p)
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		s["dir "+p] = strings.Join(names, ",") + errString(err)
	}
	hs, _ := v1Hierarchies()
	for _, h := range append(hs, filepath.Join(cgroupFS, "unified")) {
		ents, _ := os.ReadDir(h)
		var names []string
		for _, e := range ents {
			if e.IsDir() && strings.HasPrefix(e.Name(), Tag+"-") {
				names = append(names, e.Name())
			}
		}
		s["cgroups "+h] = strings.Join(names, ",")
	}
	return s
}

func errString(err error) string {
	if err != nil {
		return " (" + err.Error() + ")"
	}
	return ""
}

// Diff lists what changed from s to after.
func (s HostState) Diff(after HostState) []string {
	var out []string
	for k, v := range s {
		if after[k] != v {
			out = append(out, fmt.Sprintf("%s: %q, now %q", k, v, after[k]))
		}
	}
	sort.Strings(out)
	return out
}
