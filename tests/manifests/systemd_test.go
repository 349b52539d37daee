package manifests

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/wgcni/wgcni/tests/harness"
)

const (
	unitFile       = "wgcnid.service"
	configFile     = "wgcnid.json"
	configPathHost = "/etc/wgcni/wgcnid.json" // where the unit's ExecStart reads it
	unitWGSockets  = "/run/wireguard"         // /var/run is a symlink to /run; systemd wants the real path
)

// wantUnitCaps is the capability set the README documents for wgcnid.
var wantUnitCaps = []string{"CAP_NET_ADMIN"}

// unit is a parsed systemd unit: section -> key -> assignments in order.
type unit map[string]map[string][]string

// parseUnit reads the systemd.syntax(7) subset units use: [Section] headers,
// Key=Value lines, # and ; comments, backslash line continuation.
func parseUnit(data []byte) (unit, error) {
	u := unit{}
	section := ""
	lines := strings.Split(string(data), "\n")
	for i := 0; i < len(lines); i++ {
		line := strings.TrimSpace(lines[i])
		for strings.HasSuffix(line, "\\") && i+1 < len(lines) {
			i++
			line = strings.TrimSuffix(line, "\\") + " " + strings.TrimSpace(lines[i])
		}
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case line[0] == '[':
			if !strings.HasSuffix(line, "]") {
				return nil, fmt.Errorf("line %d: bad section header %q", i+1, line)
			}
			section = line[1 : len(line)-1]
			if u[section] == nil {
				u[section] = map[string][]string{}
			}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				return nil, fmt.Errorf("line %d: not Key=Value: %q", i+1, line)
			}
			if section == "" {
				return nil, fmt.Errorf("line %d: assignment outside a section", i+1)
			}
			k = strings.TrimSpace(k)
			u[section][k] = append(u[section][k], strings.TrimSpace(v))
		}
	}
	return u, nil
}

// last is the effective value of a single-valued setting.
func (u unit) last(section, key string) string {
	v := u[section][key]
	if len(v) == 0 {
		return ""
	}
	return v[len(v)-1]
}

// list is the effective value of a list setting: assignments accumulate and
// an empty assignment resets.
func (u unit) list(section, key string) []string {
	var out []string
	for _, v := range u[section][key] {
		if v == "" {
			out = nil
			continue
		}
		out = append(out, strings.Fields(v)...)
	}
	return out
}

// checkUnit checks wgcnid.service against the daemon's config (the example
// wgcnid.json, whose paths the unit must make writable).
func checkUnit(u unit, cfg map[string]string) problems {
	var p problems
	svc := "Service"
	if u[svc] == nil {
		p.add("no [Service] section")
		return p
	}
	for key, want := range map[string]string{
		"Type":            "simple",
		"Restart":         "always",
		"KillMode":        "process",
		"ProtectSystem":   "strict",
		"NoNewPrivileges": "yes",
	} {
		if got := u.last(svc, key); got != want {
			p.add("%s=%q, want %q", key, got, want)
		}
	}

	exec := strings.Fields(u.last(svc, "ExecStart"))
	if len(exec) == 0 || filepath.Base(exec[0]) != "wgcnid" {
		p.add("ExecStart=%v does not run wgcnid", exec)
	} else {
		args := exec[1:]
		i := slices.Index(args, "--config")
		if i < 0 || i+1 >= len(args) || args[i+1] != configPathHost {
			p.add("ExecStart must pass --config %s", configPathHost)
		}
		for _, a := range args {
			if strings.HasPrefix(a, "--") {
				name, _, _ := strings.Cut(a[2:], "=")
				if _, ok := wgcnidFlags[name]; !ok {
					p.add("ExecStart: unknown wgcnid flag --%s", name)
				}
			}
		}
	}

	// On hosts whose /dev/net/tun is 0600 the unprivileged daemon needs
	// its group to be granted the node, by root, before it starts.
	pre := u[svc]["ExecStartPre"]
	wantPre := "+/usr/local/bin/wgcnid tun-access --group " + u.last(svc, "Group")
	if !slices.Contains(pre, wantPre) {
		p.add("ExecStartPre=%q lacks %q (userspace WireGuard on 0600 /dev/net/tun hosts)", pre, wantPre)
	}

	caps := u.list(svc, "CapabilityBoundingSet")
	sort.Strings(caps)
	want := slices.Clone(wantUnitCaps)
	sort.Strings(want)
	if !slices.Equal(caps, want) {
		p.add("CapabilityBoundingSet=%v, documented %v", caps, want)
	}
	user := u.last(svc, "User")
	ambient := u.list(svc, "AmbientCapabilities")
	sort.Strings(ambient)
	if user != "" && user != "root" && user != "0" && !slices.Equal(ambient, want) {
		p.add("User=%s is not root, so AmbientCapabilities must be %v (got %v) or wgcnid holds no capability", user, want, ambient)
	}
	for _, c := range ambient {
		if !slices.Contains(caps, c) {
			p.add("AmbientCapabilities %s is outside CapabilityBoundingSet", c)
		}
	}

	// Every directory wgcnid writes must be writable under ProtectSystem=strict.
	rw := u.list(svc, "ReadWritePaths")
	writable := func(dir string) bool {
		for _, w := range rw {
			if strings.TrimLeft(w, "-+") == dir {
				return true
			}
		}
		return false
	}
	for _, dir := range []string{cfg["state-dir"], cfg["run-dir"], unitWGSockets} {
		if !writable(dir) {
			p.add("ReadWritePaths=%v lacks %s", rw, dir)
		}
	}
	// Directories systemd creates must be the ones the config uses, and the
	// run directory (node.json, the userspace device's pid file) must survive
	// a stop while pods keep running.
	if sd := u.list(svc, "StateDirectory"); len(sd) > 0 && !slices.Contains(sd, strings.TrimPrefix(cfg["state-dir"], "/var/lib/")) {
		p.add("StateDirectory=%v does not create state-dir %s", sd, cfg["state-dir"])
	}
	if rd := u.list(svc, "RuntimeDirectory"); len(rd) > 0 {
		if !slices.Contains(rd, strings.TrimPrefix(cfg["run-dir"], "/run/")) {
			p.add("RuntimeDirectory=%v does not create run-dir %s", rd, cfg["run-dir"])
		}
		if u.last(svc, "RuntimeDirectoryPreserve") != "yes" {
			p.add("RuntimeDirectoryPreserve must be yes: systemd would delete node.json and the device's pid file on stop")
		}
	}
	if m := u.last(svc, "StateDirectoryMode"); m != "" {
		if n, err := strconv.ParseUint(m, 8, 32); err != nil || n&0o077 != 0 {
			p.add("StateDirectoryMode=%s: the private key's directory must be 0700", m)
		}
	}

	// userspace WireGuard needs /dev/net/tun.
	if u.last(svc, "PrivateDevices") == "yes" {
		p.add("PrivateDevices=yes hides /dev/net/tun from userspace WireGuard")
	}
	if pol := u.last(svc, "DevicePolicy"); pol == "closed" || pol == "strict" {
		if !slices.Contains(u[svc]["DeviceAllow"], "/dev/net/tun rw") {
			p.add("DevicePolicy=%s without DeviceAllow=/dev/net/tun rw", pol)
		}
	}
	if fams := u.list(svc, "RestrictAddressFamilies"); len(fams) > 0 && !slices.Contains(fams, "AF_NETLINK") {
		p.add("RestrictAddressFamilies=%v lacks AF_NETLINK (netlink is how wgcnid does everything)", fams)
	}
	return p
}

// loadConfig decodes the example wgcnid.json strictly (duplicate keys are an
// error) and checks every key is a wgcnid flag with a valid value.
func loadConfig(data []byte) (map[string]string, problems) {
	var p problems
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil || tok != json.Delim('{') {
		p.add("%s: not a JSON object", configFile)
		return nil, p
	}
	cfg := map[string]string{}
	for dec.More() {
		kt, err := dec.Token()
		if err != nil {
			p.add("%s: %v", configFile, err)
			return nil, p
		}
		key := kt.(string)
		var v any
		if err := dec.Decode(&v); err != nil {
			p.add("%s: %s: %v", configFile, key, err)
			return nil, p
		}
		if _, dup := cfg[key]; dup {
			p.add("%s: key %q twice", configFile, key)
		}
		var s string
		switch x := v.(type) {
		case string:
			s = x
		case json.Number:
			s = x.String()
		case bool:
			s = strconv.FormatBool(x)
		default:
			p.add("%s: %s: value must be a string, number or boolean", configFile, key)
			continue
		}
		cfg[key] = s
		if key == "config" {
			p.add("%s: \"config\" inside the config file makes no sense", configFile)
			continue
		}
		if err := checkFlagValue(key, s); err != nil {
			p.add("%s: %v", configFile, err)
		}
	}
	if _, err := dec.Token(); err != nil {
		p.add("%s: %v", configFile, err)
	}
	if dec.More() {
		p.add("%s: trailing data", configFile)
	}
	for _, f := range []string{"etcd-endpoints", "etcd-cafile", "etcd-certfile", "etcd-keyfile"} {
		if cfg[f] == "" {
			p.add("%s: %s must be set (etcd over TLS with a client certificate)", configFile, f)
		}
	}
	if e := cfg["etcd-endpoints"]; e != "" {
		checkHTTPSEndpoints(&p, configFile, e)
	}
	if cfg["state-dir"] == "" {
		cfg["state-dir"] = "/var/lib/wgcni"
	}
	if cfg["run-dir"] == "" {
		cfg["run-dir"] = defaultRunDir
	}
	return cfg, p
}

func readSystemdFiles(t *testing.T) map[string][]byte {
	t.Helper()
	dir := filepath.Join(repoRoot(t), "conf", "systemd")
	files := map[string][]byte{}
	for _, f := range []string{unitFile, configFile, "etcd.service", "etcd.conf.yml"} {
		data, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		files[f] = data
	}
	return files
}

func checkSystemdFiles(files map[string][]byte) problems {
	cfg, p := loadConfig(files[configFile])
	if cfg == nil {
		return p
	}
	u, err := parseUnit(files[unitFile])
	if err != nil {
		p.add("%s: %v", unitFile, err)
		return p
	}
	return append(p, checkUnit(u, cfg)...)
}

func TestSystemdUnitAndConfig(t *testing.T) {
	for _, pr := range checkSystemdFiles(readSystemdFiles(t)) {
		t.Error(pr)
	}
}

// TestSystemdAnalyze has systemd itself read the units: `verify` for unknown
// or misspelt directives (it exits 0 on those, so any output fails the test)
// and `security --offline` for the exposure score of wgcnid.service.
func TestSystemdAnalyze(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		harness.Missing(t, "systemd-analyze (Debian systemd; make deps)")
	}
	files := readSystemdFiles(t)
	dir := t.TempDir()
	// verify insists that ExecStart's binary exists; wgcnid and etcd need not
	// be installed for the rest of the unit to be checked.
	sub := map[string][2]string{
		unitFile:       {"/usr/local/bin/wgcnid ", "/bin/true "},
		"etcd.service": {"/usr/bin/etcd ", "/bin/true "},
	}
	var units []string
	for name, s := range sub {
		text := string(files[name])
		if !strings.Contains(text, s[0]) {
			t.Fatalf("%s: no %q in ExecStart", name, s[0])
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(strings.ReplaceAll(text, s[0], s[1])), 0o644); err != nil {
			t.Fatal(err)
		}
		units = append(units, p)
	}
	sort.Strings(units)
	out, err := exec.Command(sa, append([]string{"verify", "--man=no", "--generators=no"}, units...)...).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}

	// 10 = fully exposed, 0 = locked down; systemd calls < 3.0 "OK". The
	// unit scores 2.5 as written; the threshold is in tenths.
	out, err = exec.Command(sa, "security", "--offline=yes", "--threshold=30", "--no-pager", filepath.Join(dir, unitFile)).CombinedOutput()
	if err != nil {
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		t.Errorf("systemd-analyze security: %v: %s", err, lines[len(lines)-1])
	}
}

// TestSystemdChecksCatchBrokenFiles proves the unit and config checks can fail.
func TestSystemdChecksCatchBrokenFiles(t *testing.T) {
	files := readSystemdFiles(t)
	for _, m := range []mutation{
		{"default KillMode", unitFile, "\nKillMode=process", "\nKillMode=control-group", "KillMode"},
		{"restart on failure only", unitFile, "Restart=always", "Restart=on-failure", "Restart"},
		{"NET_RAW added", unitFile, "CapabilityBoundingSet=CAP_NET_ADMIN", "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW", "CapabilityBoundingSet"},
		{"no ambient caps for non-root", unitFile, "AmbientCapabilities=CAP_NET_ADMIN", "AmbientCapabilities=", "AmbientCapabilities"},
		{"ProtectSystem full", unitFile, "ProtectSystem=strict", "ProtectSystem=full", "ProtectSystem"},
		{"wireguard dir not writable", unitFile, "ReadWritePaths=/var/lib/wgcni /run/wgcni /run/wireguard", "ReadWritePaths=/var/lib/wgcni /run/wgcni", "lacks /run/wireguard"},
		{"run dir deleted on stop", unitFile, "RuntimeDirectoryPreserve=yes", "RuntimeDirectoryPreserve=no", "RuntimeDirectoryPreserve"},
		{"no TUN access on 0600 hosts", unitFile, "ExecStartPre=+/usr/local/bin/wgcnid tun-access --group wgcni\n", "", "ExecStartPre"},
		{"TUN access for the wrong group", unitFile, "tun-access --group wgcni", "tun-access --group root", "ExecStartPre"},
		{"tun hidden", unitFile, "DeviceAllow=/dev/net/tun rw", "DeviceAllow=/dev/null rw", "DeviceAllow"},
		{"key dir readable", unitFile, "StateDirectoryMode=0700", "StateDirectoryMode=0755", "StateDirectoryMode"},
		{"wrong config path", unitFile, "--config /etc/wgcni/wgcnid.json", "--config /etc/wgcnid.json", "--config"},
		{"line outside section", unitFile, "[Unit]\n", "Orphan=1\n[Unit]\n", "outside a section"},
		{"unknown config key", configFile, `"log-level": "info"`, `"loglevel": "info"`, "unknown wgcnid flag --loglevel"},
		{"bad config value", configFile, `"lease-ttl": "1h"`, `"lease-ttl": "1 hour"`, "lease-ttl"},
		{"duplicate config key", configFile, `"mtu": 0,`, `"mtu": 0, "mtu": 1420,`, "twice"},
		{"plain-text etcd", configFile, `"etcd-endpoints": "https://10.0.0.11:2379,`, `"etcd-endpoints": "http://10.0.0.11:2379,`, "not https"},
		{"state dir moved", configFile, `"state-dir": "/var/lib/wgcni"`, `"state-dir": "/srv/wgcni"`, "lacks /srv/wgcni"},
	} {
		t.Run(m.name, func(t *testing.T) {
			got := checkSystemdFiles(applyMutation(t, maps.Clone(files), m))
			for _, g := range got {
				if strings.Contains(g, m.want) {
					t.Logf("caught: %s", g)
					return
				}
			}
			t.Errorf("mutation not caught: want a problem containing %q, got %q", m.want, got)
		})
	}
}
