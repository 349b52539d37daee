package record

import (
	"crypto/mlkem"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/wgcni/wgcni/daemon/pqkeys"
)

// The ML-KEM key field: omitted when empty (a record of a node with
// post-quantum off is byte-identical to before), round-trips, fits under
// MaxValueSize, and a malformed key refuses the record naming the field.
func TestPQPublicKeyField(t *testing.T) {
	dk, err := mlkem.GenerateKey768()
	if err != nil {
		t.Fatal(err)
	}
	l := Lease{CIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.3.0/24")}, Node: "n1", Endpoint: netip.MustParseAddrPort("10.99.0.1:51820")}
	copy(l.PublicKey[:], mustKey(t))
	if strings.Contains(string(l.Encode()), "pqPublicKey") {
		t.Fatalf("empty key is written: %s", l.Encode())
	}
	l.PQPublicKey = pqkeys.EncodePublic(dk.EncapsulationKey())
	v := l.Encode()
	if len(v) > MaxValueSize {
		t.Fatalf("record with ML-KEM key is %d bytes, over %d", len(v), MaxValueSize)
	}
	key := SubnetKey("/wgcni", l.Primary())
	got, err := DecodeSubnet("/wgcni", key, v, testCluster)
	if err != nil || !reflect.DeepEqual(got, l) {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	bad := strings.Replace(string(v), l.PQPublicKey[:8], "AAAA!AAA", 1)
	if _, err := DecodeSubnet("/wgcni", key, []byte(bad), testCluster); err == nil || !strings.Contains(err.Error(), "field pqPublicKey") {
		t.Fatalf("malformed key: %v", err)
	}
	t.Logf("record size: %d bytes without the ML-KEM key, %d with", len(Lease{CIDRs: l.CIDRs, Node: l.Node, PublicKey: l.PublicKey, Endpoint: l.Endpoint}.Encode()), len(v))
}

func mustKey(t *testing.T) []byte {
	k, err := ParseKey(testKey)
	if err != nil {
		t.Fatal(err)
	}
	return k[:]
}
