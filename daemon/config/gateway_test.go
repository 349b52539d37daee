package config

import (
	"io"
	"strings"
	"testing"
	"time"
)

func TestGatewayFlags(t *testing.T) {
	c, err := Parse("wgcnid", []string{"--node-name", "g1", "--advertise-cidrs", "192.168.77.0/24, 172.16.0.0/24", "--gateway-masquerade", "--gateway-ttl", "3s"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Sites) != 2 || c.Sites[1].String() != "172.16.0.0/24" || !c.GatewayMasquerade || c.GatewayTTL != 3*time.Second {
		t.Fatalf("%+v", c)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--advertise-cidrs", "10.244.9.0/24"}, "--advertise-cidrs: site CIDR 10.244.9.0/24 overlaps --cluster-cidr 10.244.0.0/16"},
		{[]string{"--advertise-cidrs", "10.0.0.0/8"}, "overlaps --cluster-cidr 10.244.0.0/16"},
		{[]string{"--advertise-cidrs", "fd00::/64"}, "family --cluster-cidr 10.244.0.0/16 does not have"},
		{[]string{"--advertise-cidrs", "192.168.0.0/16", "--endpoint-ip", "192.168.1.1"}, "contains --endpoint-ip 192.168.1.1"},
		{[]string{"--advertise-cidrs", "192.168.1.1/24"}, "--advertise-cidrs: 192.168.1.1/24 has host bits set"},
		{[]string{"--gateway-masquerade"}, "--gateway-masquerade: needs --advertise-cidrs"},
		{[]string{"--advertise-cidrs", "192.168.0.0/16", "--gateway-ttl", "1s"}, "--gateway-ttl: 1s"},
		{[]string{"--advertise-cidrs", "192.168.0.0/16", "--gateway-ttl", "2500ms"}, "whole seconds"},
	} {
		_, err := Parse("wgcnid", append([]string{"--node-name", "g1"}, tc.args...), io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.args, err, tc.want)
		}
	}
}
