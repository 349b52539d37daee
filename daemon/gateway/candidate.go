package gateway

import (
	"encoding/json"
	"fmt"
	"net/netip"

	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/wgcni/wgcni/daemon/record"
)

// candidateValue is the value of a gateway's election key: which record
// (and so which WireGuard peer) serves the site if it wins.
type candidateValue struct {
	Node   string `json:"node"`
	Record string `json:"record"`
}

func encodeCandidate(node string, rec netip.Prefix) string {
	b, _ := json.Marshal(candidateValue{Node: node, Record: rec.String()})
	return string(b)
}

// DecodeCandidate decodes an election key (untrusted input, like a record).
func DecodeCandidate(prefix string, kv *mvccpb.KeyValue) (Candidate, error) {
	key := string(kv.Key)
	site, err := record.ParseElectionKey(prefix, key)
	if err != nil {
		return Candidate{}, err
	}
	if len(kv.Value) > record.MaxValueSize {
		return Candidate{}, fmt.Errorf("etcd key %s: value of %d bytes exceeds %d", key, len(kv.Value), record.MaxValueSize)
	}
	var v candidateValue
	if err := json.Unmarshal(kv.Value, &v); err != nil {
		return Candidate{}, fmt.Errorf("etcd key %s: decode: %w", key, err)
	}
	if err := record.ValidNodeName(v.Node); err != nil {
		return Candidate{}, fmt.Errorf("etcd key %s: field node: %w", key, err)
	}
	rec, err := netip.ParsePrefix(v.Record)
	if err != nil {
		return Candidate{}, fmt.Errorf("etcd key %s: field record: %w", key, err)
	}
	return Candidate{Site: site, Node: v.Node, Record: rec, Key: key, Created: kv.CreateRevision}, nil
}
