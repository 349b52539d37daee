package config

import (
	"io"
	"strings"
	"testing"
)

func parse(args ...string) (*Config, error) {
	return Parse("wgcnid", append([]string{"--node-name", "n1"}, args...), io.Discard)
}

func TestClusterCIDRFamilies(t *testing.T) {
	c, err := parse("--cluster-cidr", "10.244.0.0/16,fd00:244::/48")
	if err != nil || !c.Cluster.Dual() || c.Cluster.CIDR.String() != "10.244.0.0/16" || c.Cluster.CIDR6.String() != "fd00:244::/48" || c.Cluster.NodePrefixLen6 != 64 {
		t.Fatalf("dual: %+v %v", c, err)
	}
	// Either order; IPv4 is always the primary that keys the records.
	c, err = parse("--cluster-cidr", "fd00:244::/64, 10.244.0.0/16", "--node-prefix-len-v6", "80", "--node-prefix-len", "26")
	if err != nil || c.Cluster.CIDR.String() != "10.244.0.0/16" || c.Cluster.NodePrefixLen != 26 || c.Cluster.NodePrefixLen6 != 80 {
		t.Fatalf("v6,v4: %+v %v", c.Cluster, err)
	}
	// IPv6 only: the IPv6 node prefix length applies.
	c, err = parse("--cluster-cidr", "fd00:244::/56")
	if err != nil || c.Cluster.Dual() || c.Cluster.CIDR.String() != "fd00:244::/56" || c.Cluster.NodePrefixLen != 64 {
		t.Fatalf("v6 only: %+v %v", c.Cluster, err)
	}
	// A v4-only config record stays byte-identical to before.
	c, _ = parse()
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
		{[]string{"--cluster-cidr", "10.244.0.0/16,fd00::/48", "--node-prefix-len-v6", "127"}, []string{"--node-prefix-len-v6", "nodePrefixLenV6 127", "at most /126"}},
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
