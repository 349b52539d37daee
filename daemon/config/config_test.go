package config

import (
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func TestDefaults(t *testing.T) {
	c, err := Parse("wgcnid", []string{"--node-name", "n1"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.EtcdEndpoints[0] != "http://127.0.0.1:2379" || c.EtcdPrefix != "/wgcni" || c.Cluster.CIDR.String() != "10.244.0.0/16" ||
		c.Cluster.NodePrefixLen != 24 || c.ListenPort != 51820 || c.Device != "wgcni-wg" || c.Bridge != "wgcni0" ||
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
