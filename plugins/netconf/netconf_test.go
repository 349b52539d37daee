package netconf

import (
	"errors"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

func TestParseGood(t *testing.T) {
	c, err := Parse([]byte(`{"cniVersion":"1.1.0","name":"wgcni","type":"wgcni","runDir":"/tmp/r","ipMasq":true,
		"hairpinMode":true,"mtu":1400,"ipam":{"type":"wgcni-ipam"},
		"cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}],
		"prevResult":{"cniVersion":"1.1.0","interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{"address":"10.244.3.2/24","interface":0}]}}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.RunDir != "/tmp/r" || !c.IPMasq || !c.HairpinMode || c.MTU != 1400 || c.IPAMType != "wgcni-ipam" {
		t.Fatalf("parsed %+v", c)
	}
	if !c.HasValidAttachments || len(c.ValidAttachments) != 1 || c.ValidAttachments[0].IfName != "eth0" {
		t.Fatalf("valid attachments %+v", c.ValidAttachments)
	}
	if c.PrevResult == nil || len(c.PrevResult.IPs) != 1 || c.PrevResult.IPs[0].Address.String() != "10.244.3.2/24" {
		t.Fatalf("prevResult %+v", c.PrevResult)
	}
}

func TestParseDefaults(t *testing.T) {
	c, err := Parse([]byte(`{"cniVersion":"0.3.1","name":"n","type":"wgcni","ipam":{"type":"wgcni-ipam"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.RunDir != "/run/wgcni" || c.IPMasq || c.MTU != 0 || c.HasValidAttachments || c.PrevResult != nil {
		t.Fatalf("defaults %+v", c)
	}
	// An empty list is a real list: release everything.
	c, err = Parse([]byte(`{"name":"n","ipam":{"type":"x"},"cni.dev/valid-attachments":[]}`))
	if err != nil || !c.HasValidAttachments {
		t.Fatalf("empty valid-attachments: %+v %v", c, err)
	}
}

func TestParseBad(t *testing.T) {
	base := `"cniVersion":"1.1.0","name":"n","type":"wgcni"`
	cases := map[string]string{
		`{` + base + `}`:                                                    "field ipam:",
		`{` + base + `,"ipam":{}}`:                                          "field ipam.type:",
		`{` + base + `,"ipam":"wgcni-ipam"}`:                                "field ipam:",
		`{` + base + `,"ipam":{"type":7}}`:                                  "field ipam.type:",
		`{` + base + `,"ipam":{"type":"a/b"}}`:                              "field ipam.type:",
		`{` + base + `,"ipam":{"type":"i"},"mtu":"9000"}`:                   "field mtu:",
		`{` + base + `,"ipam":{"type":"i"},"mtu":1.5}`:                      "field mtu:",
		`{` + base + `,"ipam":{"type":"i"},"mtu":70000}`:                    "field mtu:",
		`{` + base + `,"ipam":{"type":"i"},"ipMasq":1}`:                     "field ipMasq:",
		`{` + base + `,"ipam":{"type":"i"},"hairpinMode":"on"}`:             "field hairpinMode:",
		`{` + base + `,"ipam":{"type":"i"},"runDir":"rel"}`:                 "field runDir:",
		`{` + base + `,"ipam":{"type":"i"},"runDir":""}`:                    "field runDir:",
		`{` + base + `,"ipam":{"type":"i"},"runDir":5}`:                     "field runDir:",
		`{` + base + `,"ipam":{"type":"i"},"dns":5}`:                        "field dns:",
		`{` + base + `,"ipam":{"type":"i"},"prevResult":[]}`:                "field prevResult:",
		`{"name":"","ipam":{"type":"i"}}`:                                   "field name:",
		`{"name":3,"ipam":{"type":"i"}}`:                                    "field name:",
		`[1,2]`:                                                             "not a JSON object",
		`null`:                                                              "not a JSON object",
		`{` + base + `,"ipam":{"type":"i"},"cni.dev/valid-attachments":{}}`: "field cni.dev/valid-attachments:",
		`{` + base + `,"ipam":{"type":"i"},"cni.dev/valid-attachments":[{"containerID":"c"}]}`: "field cni.dev/valid-attachments[0]:",
	}
	for in, want := range cases {
		_, err := Parse([]byte(in))
		var ce *types.Error
		if !errors.As(err, &ce) {
			t.Fatalf("%s: error %v is not a CNI error", in, err)
		}
		if ce.Code != types.ErrInvalidNetworkConfig {
			t.Fatalf("%s: code %d, want 7", in, ce.Code)
		}
		if !strings.Contains(ce.Msg, want) {
			t.Fatalf("%s: message %q does not contain %q", in, ce.Msg, want)
		}
	}
}

// FuzzParse: any input either parses into a config that satisfies the
// validation rules, or fails with a code-7 CNI error; it never panics.
func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"cniVersion":"1.1.0","name":"wgcni","type":"wgcni","runDir":"/run/wgcni","ipMasq":true,"ipam":{"type":"wgcni-ipam"}}`))
	f.Add([]byte(`{"name":"n","ipam":{"type":"i"},"mtu":1400,"prevResult":{"ips":[{"address":"10.0.0.2/24"}]}}`))
	f.Add([]byte(`{"name":"n","ipam":{"type":"i"},"cni.dev/valid-attachments":[{"containerID":"a","ifname":"b"}]}`))
	f.Add([]byte(`{"name":"n","ipam":{"type":"i"},"dns":{"nameservers":["1.1.1.1"]}}`))
	// Conflist-level "args" and "runtimeConfig" (what a runtime adds) must
	// never change validation.
	f.Add([]byte(`{"name":"n","ipam":{"type":"i"},"args":{"cni":{"ips":["10.0.0.9"]}},"runtimeConfig":{"portMappings":[{"hostPort":1}]}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data)
		if err != nil {
			var ce *types.Error
			if !errors.As(err, &ce) || ce.Code != types.ErrInvalidNetworkConfig {
				t.Fatalf("error %v is not a code-7 CNI error", err)
			}
			return
		}
		if c.Name == "" || c.IPAMType == "" || !strings.HasPrefix(c.RunDir, "/") {
			t.Fatalf("accepted invalid config %+v", c)
		}
		if c.MTU != 0 && (c.MTU < MinMTU || c.MTU > MaxMTU) {
			t.Fatalf("accepted mtu %d", c.MTU)
		}
	})
}
