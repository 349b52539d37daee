package harness

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

const ownerFile = "owner.pid"

// runAlive reports whether the harness process that owns run dir is alive.
func runAlive(dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, ownerFile))
	if err != nil {
		// A run that is just being set up has its dir but not yet its
		// owner file: leave young dirs alone.
		st, serr := os.Stat(dir)
		return serr == nil && time.Since(st.ModTime()) < time.Minute
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return false
	}
	_, err = os.Stat(filepath.Join("/proc", strconv.Itoa(pid)))
	return err == nil
}

// Sweep removes what crashed earlier harness runs left behind: namespaces
// named wge-<run>-* whose owning process is gone (and the processes inside
// them, by PID), their stale WireGuard control sockets and run dirs. Runs
// whose owner is alive (a concurrent test or a running demo) are untouched.
func Sweep(logf func(string, ...any)) { SweepTag(Tag, logf) }

// SweepTag is Sweep for runs made with Config.Tag = tag.
func SweepTag(tag string, logf func(string, ...any)) {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	runs := map[string]bool{}
	ents, _ := os.ReadDir(NetnsDir)
	for _, e := range ents {
		if id, ok := runIDOf(tag, e.Name()); ok {
			runs[id] = true
		}
	}
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), tag+"-*"))
	for _, d := range dirs {
		if id, ok := runIDOf(tag, filepath.Base(d)); ok {
			runs[id] = true
		}
	}
	for id := range runs {
		dir := filepath.Join(os.TempDir(), tag+"-"+id)
		if runAlive(dir) {
			continue
		}
		for _, e := range ents {
			if rid, ok := runIDOf(tag, e.Name()); ok && rid == id {
				logf("harness: sweeping leftover netns %s", e.Name())
				if err := deleteNS(NS{Name: e.Name()}); err != nil {
					logf("harness: %v", err)
				}
			}
		}
		socks, _ := filepath.Glob(filepath.Join("/var/run/wireguard", tag+"-"+id+"-*.sock"))
		for _, s := range socks {
			_ = os.Remove(s)
		}
		_ = os.RemoveAll(dir)
	}
}

// runIDOf extracts the run id from "wge-<id>" or "wge-<id>-...".
func runIDOf(tag, name string) (string, bool) {
	rest, ok := strings.CutPrefix(name, tag+"-")
	if !ok {
		return "", false
	}
	id, _, _ := strings.Cut(rest, "-")
	if len(id) != 4 {
		return "", false
	}
	for _, r := range id {
		if !strings.ContainsRune("0123456789abcdef", r) {
			return "", false
		}
	}
	return id, true
}
