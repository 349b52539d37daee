package pqexchange

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

// secretForms are the ways a 32- or 64-byte secret could show up in text.
func secretForms(b []byte) []string {
	return []string{base64.StdEncoding.EncodeToString(b), hex.EncodeToString(b), strings.ToUpper(hex.EncodeToString(b)), fmt.Sprint(b), fmt.Sprint([]byte(b[:16]))[1:20]}
}

// TestKeyMaterialNeverInOutput runs good, tampered and failing exchanges
// with debug logging and checks that no PSK or ML-KEM private key appears
// in any log line, error string or formatting of the results.
func TestKeyMaterialNeverInOutput(t *testing.T) {
	ini, resp, _, _ := pair(t, nil)
	var text strings.Builder
	var results []Result
	for range 2 {
		res, err := ini.Exchange(context.Background(), resp.id.WG)
		if err != nil {
			t.Fatal(err)
		}
		results = append(results, res)
	}
	// Failures: a tampered exchange (bad tags), a stale replay, an
	// exchange with a node that is gone.
	tini, tresp, _, _ := pair(t, func(toResponder bool, b []byte) []byte {
		if typ, _ := PeekType(b); typ == TypeResp || typ == TypeAck {
			b[len(b)-1] ^= 1
		}
		return b
	})
	_, err := tini.Exchange(context.Background(), tresp.id.WG)
	text.WriteString(fmt.Sprint(err))
	x, _ := NewInitiator(ini.id, remote(resp.id), 1)
	text.WriteString(fmt.Sprint(resp.handle(x.InitMessage(), ini.Addr())))

	var logBuf bytes.Buffer
	slogger := slog.New(slog.NewJSONHandler(&logBuf, nil))
	for _, r := range append(results, resp.installs()...) {
		slogger.Info("result", "result", r, "psk", r.PSK)
		fmt.Fprintf(&text, "%v %+v %#v %s %x %X %d %q %v", r, r, r, r.PSK, r.PSK, r.PSK, r.PSK, r.PSK, &r.PSK)
	}
	for _, n := range []*testNode{ini, resp, tini, tresp} {
		slogger.Info("key", "kem", n.id.KEM)
		fmt.Fprintf(&text, "%v %x %#v", n.id.KEM, n.id.KEM, n.id)
		text.WriteString(n.log.String())
	}
	out := text.String() + logBuf.String()
	if !strings.Contains(out, "post-quantum PSK installed") || !strings.Contains(out, "redacted") {
		t.Fatalf("the output checked is not what the test meant to produce:\n%s", out)
	}
	var secrets []string
	for _, r := range append(results, resp.installs()...) {
		k := r.PSK.Key()
		secrets = append(secrets, secretForms(k[:])...)
	}
	for _, n := range []*testNode{ini, resp, tini, tresp} {
		secrets = append(secrets, secretForms(n.id.KEM.Decapsulation().Bytes())...)
	}
	for _, s := range secrets {
		if strings.Contains(out, s) {
			t.Fatalf("key material %q… appears in the output", s[:6])
		}
	}
}
