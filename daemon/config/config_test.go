package config

import (
	"errors"
	"flag"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/record"
)

func TestDefaults(t *testing.T) {
	c, err := Parse("wgcnid", []string{"--node-name", "n1"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.EtcdEndpoints[0] != "http://127.0.0.1:2379" || c.EtcdPrefix != "/wgcni" || c.Cluster.Primary().CIDR.String() != "10.244.0.0/16" ||
		c.Cluster.Primary().NodePrefixLen != 24 || c.ListenPort != 51820 || c.Device != "wgcni-wg" || c.Bridge != "wgcni0" ||
		c.StateDir != "/var/lib/wgcni" || c.RunDir != "/run/wgcni" || c.LeaseTTL != time.Hour || c.WireGuard != "auto" ||
		c.ResyncInterval != time.Minute || c.MTU != 0 {
		t.Fatalf("defaults: %+v", c)
	}
}

func TestConfigFileCommandLineWins(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.json")
	os.WriteFile(path, []byte(`{"node-name":"fromfile","listen-port":51000,"etcd-endpoints":["http://a:1","http://b:2"],"lease-ttl":"5s","device":"wgx"}`), 0o644)
	c, err := Parse("wgcnid", []string{"--config", path, "--device", "wgcli"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.NodeName != "fromfile" || c.ListenPort != 51000 || len(c.EtcdEndpoints) != 2 || c.LeaseTTL != 5*time.Second || c.Device != "wgcli" {
		t.Fatalf("%+v", c)
	}
	os.WriteFile(path, []byte(`{"nosuch":1}`), 0o644)
	if _, err := Parse("wgcnid", []string{"--config", path}, io.Discard); err == nil || !strings.Contains(err.Error(), `"nosuch"`) {
		t.Fatalf("unknown key: %v", err)
	}
	os.WriteFile(path, []byte(`{"listen-port":"x"}`), 0o644)
	if _, err := Parse("wgcnid", []string{"--config", path}, io.Discard); err == nil || !strings.Contains(err.Error(), "listen-port") {
		t.Fatalf("bad value: %v", err)
	}
}

func TestValidationNamesFlag(t *testing.T) {
	for _, c := range []struct {
		args []string
		flag string
	}{
		{[]string{"--cluster-cidr", "10.244.0.0/33"}, "--cluster-cidr"},
		{[]string{"--cluster-cidr", "10.244.0.0/24", "--node-prefix-len", "24"}, "--node-prefix-len"},
		{[]string{"--node-prefix-len", "31"}, "--node-prefix-len"},
		{[]string{"--endpoint-ip", "nope"}, "--endpoint-ip"},
		{[]string{"--endpoint-ip", "10.244.0.5"}, "--endpoint-ip"},
		{[]string{"--listen-port", "0"}, "--listen-port"},
		{[]string{"--device", "a-very-long-interface-name"}, "--device"},
		{[]string{"--bridge", "x/y"}, "--bridge"},
		{[]string{"--lease-ttl", "1s"}, "--lease-ttl"},
		{[]string{"--keepalive", "1500ms"}, "--keepalive"},
		{[]string{"--mtu", "500"}, "--mtu"},
		{[]string{"--wireguard", "maybe"}, "--wireguard"},
		{[]string{"--reachable", "sometimes"}, "--reachable"},
		{[]string{"--device-host", "sidecar"}, "--device-host"},
		{[]string{"--device-host", "external"}, "--device-host=external"},
		{[]string{"--device-host", "external", "--wireguard", "kernel"}, "--wireguard=userspace"},
		{[]string{"--log-level", "loud"}, "--log-level"},
		{[]string{"--log-format", "xml"}, "--log-format"},
		{[]string{"--etcd-endpoints", "127.0.0.1:2379"}, "--etcd-endpoints"},
		{[]string{"--etcd-prefix", "wgcni"}, "--etcd-prefix"},
		{[]string{"--node-name", "bad name"}, "--node-name"},
		{[]string{"--etcd-certfile", "c.pem"}, "--etcd-keyfile"},
		{[]string{"--host-encryption", "--host-only"}, "--host-encryption"},
	} {
		_, err := Parse("wgcnid", append([]string{"--node-name", "n1"}, c.args...), io.Discard)
		if err == nil || !strings.Contains(err.Error(), c.flag) {
			t.Errorf("%v: err %v does not name %s", c.args, err, c.flag)
		}
	}
}

func TestDeviceHost(t *testing.T) {
	c, err := Parse("wgcnid", []string{"--node-name", "n1"}, io.Discard)
	if err != nil || c.DeviceHost != HostSpawn {
		t.Fatalf("default must be spawn: %q %v", c.DeviceHost, err)
	}
	c, err = Parse("wgcnid", []string{"--node-name", "n1", "--wireguard", "userspace", "--device-host", "external"}, io.Discard)
	if err != nil || c.DeviceHost != HostExternal {
		t.Fatalf("external with userspace: %q %v", c.DeviceHost, err)
	}
}

func TestMetricsAddr(t *testing.T) {
	c, err := Parse("wgcnid", []string{"--node-name", "n1"}, io.Discard)
	if err != nil || c.MetricsAddr != "" {
		t.Fatalf("default must be off: %q %v", c.MetricsAddr, err)
	}
	for _, ok := range []string{"127.0.0.1:9586", ":9586", "[::1]:9586"} {
		if c, err := Parse("wgcnid", []string{"--node-name", "n1", "--metrics-addr", ok}, io.Discard); err != nil || c.MetricsAddr != ok {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"9586", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:x", "h:70000"} {
		if _, err := Parse("wgcnid", []string{"--node-name", "n1", "--metrics-addr", bad}, io.Discard); err == nil || !strings.Contains(err.Error(), "--metrics-addr") {
			t.Errorf("%s: want --metrics-addr error, got %v", bad, err)
		}
	}
}

func TestParseExtraSharesConfigFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.json")
	os.WriteFile(path, []byte(`{"node-name":"fromfile","run-dir":"/tmp/x"}`), 0o644)
	var out string
	c, err := ParseExtra("wgcnictl", []string{"--config", path, "-o", "json"}, io.Discard, func(fs *flag.FlagSet) {
		fs.StringVar(&out, "o", "table", "output")
	})
	if err != nil || c.NodeName != "fromfile" || c.RunDir != "/tmp/x" || out != "json" {
		t.Fatalf("%+v %q %v", c, out, err)
	}
}

func TestJSONLogPrintsKeysAsStrings(t *testing.T) {
	c, err := Parse("wgcnid", []string{"--node-name", "n1", "--log-format", "json"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	k := wgtypes.Key{1, 2, 3}
	c.NewLogger(&b).Info("x", "public_key", k, "err", errors.New("boom"))
	if !strings.Contains(b.String(), `"public_key":"`+k.String()+`"`) || !strings.Contains(b.String(), `"err":"boom"`) {
		t.Fatal(b.String())
	}
}

func parse(args ...string) (*Config, error) {
	return Parse("wgcnid", append([]string{"--node-name", "n1"}, args...), io.Discard)
}

func TestClusterCIDRFamilies(t *testing.T) {
	grid := func(cidr string, n int) record.Grid {
		return record.Grid{CIDR: netip.MustParsePrefix(cidr), NodePrefixLen: n}
	}
	for _, tc := range []struct {
		name string
		args []string
		want []record.Grid
	}{
		{"v4", nil, []record.Grid{grid("10.244.0.0/16", 24)}},
		{"dual", []string{"--cluster-cidr", "10.244.0.0/16,fd00:244::/48"}, []record.Grid{grid("10.244.0.0/16", 24), grid("fd00:244::/48", 64)}},
		// Either order; IPv4 is always the primary that keys the records.
		{"v6,v4", []string{"--cluster-cidr", "fd00:244::/64, 10.244.0.0/16", "--node-prefix-len-v6", "80", "--node-prefix-len", "26"},
			[]record.Grid{grid("10.244.0.0/16", 26), grid("fd00:244::/64", 80)}},
		// IPv6 only: the IPv6 node prefix length applies.
		{"v6", []string{"--cluster-cidr", "fd00:244::/56"}, []record.Grid{grid("fd00:244::/56", 64)}},
	} {
		c, err := parse(tc.args...)
		if err != nil || !slices.Equal(c.Cluster.Grids, tc.want) {
			t.Errorf("%s: %+v %v, want %v", tc.name, c, err, tc.want)
		}
	}
	// A v4-only config record stays byte-identical to before.
	c, _ := parse()
	if rec := c.Cluster.Record(); rec.ClusterCIDRv6 != "" || rec.NodePrefixLenV6 != 0 {
		t.Fatalf("v4-only record grew v6 fields: %+v", rec)
	}
}

func TestClusterCIDRBadInput(t *testing.T) {
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"--cluster-cidr", "10.244.0.0/16,10.245.0.0/16"}, []string{"--cluster-cidr", "both IPv4", "one CIDR per family"}},
		{[]string{"--cluster-cidr", "fd00:1::/48,fd00:2::/48"}, []string{"--cluster-cidr", "both IPv6"}},
		{[]string{"--cluster-cidr", "10.244.0.0/16,fd00::/48,fd01::/48"}, []string{"--cluster-cidr", "one IPv4 and one IPv6"}},
		{[]string{"--cluster-cidr", "::ffff:10.244.0.0/112"}, []string{"--cluster-cidr", "IPv4-mapped"}},
		// A v6 node prefix longer than the cluster prefix allows.
		{[]string{"--cluster-cidr", "10.244.0.0/16,fd00::/48", "--node-prefix-len-v6", "127"}, []string{"--node-prefix-len-v6", "node prefix length 127", "at most /126"}},
		{[]string{"--cluster-cidr", "10.244.0.0/16,fd00::/48", "--node-prefix-len-v6", "80"}, []string{"--node-prefix-len-v6", "2^32", "at most /68"}},
		{[]string{"--cluster-cidr", "fd00::/64", "--node-prefix-len-v6", "64"}, []string{"--node-prefix-len-v6", "must be longer than"}},
		{[]string{"--cluster-cidr", "fd00::1/48"}, []string{"host bits"}},
		// Settings of the wrong family.
		{[]string{"--cluster-cidr", "10.244.0.0/16,fd00::/48", "--endpoint-ip", "fd00::7"}, []string{"--endpoint-ip", "inside --cluster-cidr"}},
		{[]string{"--cluster-cidr", "10.244.0.0/16,fd00::/48", "--host-cidr", "fd00:0:0:ff::/64"}, []string{"--host-cidr"}},
	} {
		_, err := parse(c.args...)
		if err == nil {
			t.Errorf("%v accepted", c.args)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%v: error %q does not say %q", c.args, err, w)
			}
		}
	}
}
