package ipamconf

import (
	"errors"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

func TestParseRunDirPrecedence(t *testing.T) {
	cases := []struct{ in, runDir, dataDir string }{
		{`{"name":"n","ipam":{"type":"wgcni-ipam"}}`, "/run/wgcni", ""},
		{`{"name":"n","runDir":"/a","ipam":{"type":"wgcni-ipam"}}`, "/a", ""},
		{`{"name":"n","runDir":"/a","ipam":{"type":"wgcni-ipam","runDir":"/b","dataDir":"/d"}}`, "/b", "/d"},
	}
	for _, tc := range cases {
		c, err := Parse([]byte(tc.in))
		if err != nil {
			t.Fatalf("%s: %v", tc.in, err)
		}
		if c.RunDir != tc.runDir || c.DataDir != tc.dataDir || c.Name != "n" {
			t.Fatalf("%s: got %+v", tc.in, c)
		}
	}
}

func TestParseBad(t *testing.T) {
	cases := map[string]string{
		`{"name":"n"}`: "field ipam:",
		`{"name":"n","ipam":{"type":"wgcni-ipam","dataDir":"rel"}}`:    "field ipam.dataDir:",
		`{"name":"n","ipam":{"type":"wgcni-ipam","dataDir":1}}`:        "field ipam.dataDir:",
		`{"name":"n","ipam":{"type":"wgcni-ipam","runDir":"x"}}`:       "field ipam.runDir:",
		`{"name":"n","runDir":[],"ipam":{"type":"wgcni-ipam"}}`:        "field runDir:",
		`{"ipam":{"type":"wgcni-ipam"}}`:                               "field name:",
		`{"name":"n","ipam":{},"cni.dev/valid-attachments":"x"}`:       "field cni.dev/valid-attachments:",
		`{"name":"n","cniVersion":"1.1.0","ipam":{},"prevResult":"x"}`: "field prevResult:",
	}
	for in, want := range cases {
		_, err := Parse([]byte(in))
		var ce *types.Error
		if !errors.As(err, &ce) || ce.Code != types.ErrInvalidNetworkConfig || !strings.Contains(ce.Msg, want) {
			t.Fatalf("%s: got %v, want code 7 naming %q", in, err, want)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"cniVersion":"1.1.0","name":"wgcni","runDir":"/run/wgcni","ipam":{"type":"wgcni-ipam","dataDir":"/var/lib/x"}}`))
	f.Add([]byte(`{"name":"n","ipam":{},"cni.dev/valid-attachments":[{"containerID":"a","ifname":"b"}]}`))
	f.Add([]byte(`{"name":"n","cniVersion":"0.4.0","ipam":{},"prevResult":{"ips":[{"version":"4","address":"10.0.0.2/24"}]}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data)
		if err != nil {
			var ce *types.Error
			if !errors.As(err, &ce) || ce.Code != types.ErrInvalidNetworkConfig {
				t.Fatalf("error %v is not a code-7 CNI error", err)
			}
			return
		}
		if c.Name == "" || !strings.HasPrefix(c.RunDir, "/") || (c.DataDir != "" && !strings.HasPrefix(c.DataDir, "/")) {
			t.Fatalf("accepted invalid config %+v", c)
		}
	})
}
