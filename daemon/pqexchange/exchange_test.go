package pqexchange

import (
	"crypto/mlkem"
	"errors"
	"path/filepath"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/pqkeys"
)

// newLocal makes a node identity with a real stored ML-KEM key.
func newLocal(t testing.TB) Local {
	t.Helper()
	k, _, err := pqkeys.LoadOrCreate(filepath.Join(t.TempDir(), "state"))
	if err != nil {
		t.Fatal(err)
	}
	wg, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return Local{WG: wg.PublicKey(), KEM: k}
}

// newPair returns two identities ordered so that the first initiates.
func newPair(t testing.TB) (ini, resp Local) {
	a, b := newLocal(t), newLocal(t)
	if Initiates(a.WG, b.WG) {
		return a, b
	}
	return b, a
}

func remote(l Local) Remote { return Remote{WG: l.WG, KEM: l.KEM.Public()} }

// directory is a peer directory over the given identities, as etcd would
// publish them.
func directory(ls ...Local) func(wgtypes.Key) (*mlkem.EncapsulationKey768, bool) {
	m := map[wgtypes.Key]*mlkem.EncapsulationKey768{}
	for _, l := range ls {
		m[l.WG] = l.KEM.Public()
	}
	return func(k wgtypes.Key) (*mlkem.EncapsulationKey768, bool) { ek, ok := m[k]; return ek, ok }
}

// installs records what a side installed.
type installs []Result

func (in *installs) install(r Result) error { *in = append(*in, r); return nil }

// run does one full exchange and returns both sides' results.
func run(t *testing.T, i, r Local, resp *Responder, epoch uint64, rin *installs) (Result, Result) {
	t.Helper()
	ini, err := NewInitiator(i, remote(r), epoch)
	if err != nil {
		t.Fatal(err)
	}
	m2, err := resp.HandleInit(mustDecode(t, ini.InitMessage()).(*Init))
	if err != nil {
		t.Fatalf("HandleInit: %v", err)
	}
	m3, err := ini.HandleResp(mustDecode(t, m2).(*Resp))
	if err != nil {
		t.Fatalf("HandleResp: %v", err)
	}
	n := len(*rin)
	m4, err := resp.HandleConfirm(mustDecode(t, m3).(*Confirm), rin.install)
	if err != nil {
		t.Fatalf("HandleConfirm: %v", err)
	}
	if len(*rin) != n+1 {
		t.Fatal("responder acknowledged without installing")
	}
	res, err := ini.HandleAck(mustDecode(t, m4).(*Ack))
	if err != nil {
		t.Fatalf("HandleAck: %v", err)
	}
	return res, (*rin)[n]
}

func mustDecode(t *testing.T, b []byte) any {
	t.Helper()
	m, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestBothSidesDeriveTheSamePSKAndItChangesPerEpoch(t *testing.T) {
	i, r := newPair(t)
	resp := NewResponder(r, directory(i, r))
	var rin installs
	seen := []PSK{}
	for epoch := uint64(1); epoch <= 3; epoch++ {
		a, b := run(t, i, r, resp, epoch, &rin)
		if !a.PSK.Equal(b.PSK) || a.PSK.IsZero() {
			t.Fatalf("epoch %d: the two sides derived different (or zero) PSKs", epoch)
		}
		if a.Epoch != epoch || b.Epoch != epoch || a.Peer != r.WG || b.Peer != i.WG || !a.Initiator || b.Initiator {
			t.Fatalf("epoch %d: results %v / %v", epoch, a, b)
		}
		for _, old := range seen {
			if old.Equal(a.PSK) {
				t.Fatalf("epoch %d repeats an earlier PSK", epoch)
			}
		}
		seen = append(seen, a.PSK)
		if resp.Committed(i.WG) != epoch {
			t.Fatalf("committed epoch %d, want %d", resp.Committed(i.WG), epoch)
		}
	}
}

// TestTamperedMessagesRejected flips one byte in each part of each message
// and checks that the exchange does not complete with it.
func TestTamperedMessagesRejected(t *testing.T) {
	i, r := newPair(t)
	for _, tc := range []struct {
		name   string
		msg    Type
		offset int // into the body
	}{
		{"init epoch", TypeInit, 0},
		{"init sid", TypeInit, 8},
		{"init ephemeral key", TypeInit, 8 + 8 + 64 + 100},
		{"init ciphertext", TypeInit, 8 + 8 + 64 + mlkem.EncapsulationKeySize768 + 5},
		{"resp sidR", TypeResp, 8},
		{"resp ciphertext to initiator", TypeResp, 16 + 3},
		{"resp ciphertext to ephemeral", TypeResp, 16 + mlkem.CiphertextSize768 + 3},
		{"resp tag", TypeResp, 16 + 2*mlkem.CiphertextSize768},
		{"confirm tag", TypeConfirm, 16 + 4},
		{"ack tag", TypeAck, 16 + 31},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := NewResponder(r, directory(i, r))
			var rin installs
			ini, _ := NewInitiator(i, remote(r), 7)
			flip := func(typ Type, b []byte) []byte {
				if typ == tc.msg {
					b = append([]byte(nil), b...)
					b[headerSize+tc.offset] ^= 0x40
				}
				return b
			}
			fail := func(step string, err error) {
				if err == nil {
					t.Fatalf("%s accepted the tampered message", step)
				}
				if len(rin) != 0 {
					t.Fatal("responder installed a PSK from a tampered exchange")
				}
			}
			m2, err := resp.HandleInit(mustDecode(t, flip(TypeInit, ini.InitMessage())).(*Init))
			if err != nil {
				fail("HandleInit", err)
				return
			}
			m3, err := ini.HandleResp(mustDecode(t, flip(TypeResp, m2)).(*Resp))
			if err != nil {
				fail("HandleResp", err)
				return
			}
			m4, err := resp.HandleConfirm(mustDecode(t, flip(TypeConfirm, m3)).(*Confirm), rin.install)
			if err != nil {
				fail("HandleConfirm", err)
				return
			}
			if _, err := ini.HandleAck(mustDecode(t, flip(TypeAck, m4)).(*Ack)); err == nil || !errors.Is(err, ErrBadTag) {
				t.Fatalf("tampered ack: %v", err)
			}
		})
	}
}

// TestWrongStaticKeys: a responder without the right static key (an
// impostor, or etcd publishing another key) and an initiator whose
// published key the responder does not have both fail the tag checks.
func TestWrongStaticKeys(t *testing.T) {
	i, r := newPair(t)
	impostor := Local{WG: r.WG, KEM: newLocal(t).KEM} // R's identity, another ML-KEM key
	otherI := Local{WG: i.WG, KEM: newLocal(t).KEM}
	for name, tc := range map[string]struct {
		iSees Remote     // what the initiator thinks R's key is
		resp  *Responder // who answers
	}{
		"impostor responder":     {remote(r), NewResponder(impostor, directory(i, r))},
		"directory lies about R": {remote(impostor), NewResponder(r, directory(i, r))},
		"directory lies about I": {remote(r), NewResponder(r, directory(otherI, r))},
	} {
		t.Run(name, func(t *testing.T) {
			var rin installs
			ini, _ := NewInitiator(i, tc.iSees, 1)
			m2, err := tc.resp.HandleInit(mustDecode(t, ini.InitMessage()).(*Init))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := ini.HandleResp(mustDecode(t, m2).(*Resp)); !errors.Is(err, ErrBadTag) {
				t.Fatalf("HandleResp = %v, want ErrBadTag", err)
			}
			if len(rin) != 0 {
				t.Fatal("installed")
			}
		})
	}
}

func TestReplaysRejected(t *testing.T) {
	i, r := newPair(t)
	resp := NewResponder(r, directory(i, r))
	var rin installs
	ini, _ := NewInitiator(i, remote(r), 5)
	m1 := ini.InitMessage()
	m2, _ := resp.HandleInit(mustDecode(t, m1).(*Init))
	// A retransmitted Init gets the same Resp (no second session).
	if again, err := resp.HandleInit(mustDecode(t, m1).(*Init)); err != nil || string(again) != string(m2) {
		t.Fatalf("retransmitted Init: %v", err)
	}
	m3, _ := ini.HandleResp(mustDecode(t, m2).(*Resp))
	m4, err := resp.HandleConfirm(mustDecode(t, m3).(*Confirm), rin.install)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ini.HandleAck(mustDecode(t, m4).(*Ack)); err != nil {
		t.Fatal(err)
	}
	// A retransmitted Confirm (its Ack was lost) is acknowledged again
	// without a second install.
	if again, err := resp.HandleConfirm(mustDecode(t, m3).(*Confirm), rin.install); err != nil || string(again) != string(m4) || len(rin) != 1 {
		t.Fatalf("retransmitted Confirm: %v, %d installs", err, len(rin))
	}
	// The Init replayed after the commit: stale epoch.
	if _, err := resp.HandleInit(mustDecode(t, m1).(*Init)); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("replayed Init: %v", err)
	}
	// An older epoch, freshly made: stale too.
	old, _ := NewInitiator(i, remote(r), 4)
	if _, err := resp.HandleInit(mustDecode(t, old.InitMessage()).(*Init)); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("older epoch: %v", err)
	}
	// Replies replayed to the initiator after it finished.
	if _, err := ini.HandleAck(mustDecode(t, m4).(*Ack)); !errors.Is(err, ErrState) {
		t.Fatalf("replayed Ack: %v", err)
	}
	// The old exchange's messages replayed into a new one.
	run(t, i, r, resp, 6, &rin)
	if _, err := resp.HandleConfirm(mustDecode(t, m3).(*Confirm), rin.install); !errors.Is(err, ErrUnknownSession) {
		t.Fatalf("Confirm of an older exchange: %v", err)
	}
	ini7, _ := NewInitiator(i, remote(r), 7)
	if _, err := ini7.HandleResp(mustDecode(t, m2).(*Resp)); !errors.Is(err, ErrUnknownSession) {
		t.Fatalf("old Resp into a new exchange: %v", err)
	}
	if len(rin) != 2 {
		t.Fatalf("%d installs, want 2", len(rin))
	}
}

func TestRolesAndAddressing(t *testing.T) {
	i, r := newPair(t)
	// R must not initiate to I (the larger key responds), and I refuses.
	backwards, _ := NewInitiator(r, remote(i), 1)
	if _, err := NewResponder(i, directory(i, r)).HandleInit(mustDecode(t, backwards.InitMessage()).(*Init)); !errors.Is(err, ErrWrongRole) {
		t.Fatalf("reverse initiation: %v", err)
	}
	third := newLocal(t)
	ini, _ := NewInitiator(i, remote(r), 1)
	if _, err := NewResponder(third, directory(i, r, third)).HandleInit(mustDecode(t, ini.InitMessage()).(*Init)); !errors.Is(err, ErrNotForUs) {
		t.Fatalf("Init for another node: %v", err)
	}
	if _, err := NewResponder(r, directory(r)).HandleInit(mustDecode(t, ini.InitMessage()).(*Init)); !errors.Is(err, ErrUnknownPeer) {
		t.Fatalf("Init from an unknown peer: %v", err)
	}
	if _, err := NewInitiator(i, Remote{WG: r.WG}, 1); !errors.Is(err, ErrUnknownPeer) {
		t.Fatalf("peer without ML-KEM key: %v", err)
	}
}

// TestFailedInstallIsNotAcknowledged: the Ack promises the PSK is
// installed, so a failed install sends none and a retransmitted Confirm
// retries the install.
func TestFailedInstallIsNotAcknowledged(t *testing.T) {
	i, r := newPair(t)
	resp := NewResponder(r, directory(i, r))
	ini, _ := NewInitiator(i, remote(r), 1)
	m2, _ := resp.HandleInit(mustDecode(t, ini.InitMessage()).(*Init))
	m3, _ := ini.HandleResp(mustDecode(t, m2).(*Resp))
	boom := errors.New("device gone")
	if m4, err := resp.HandleConfirm(mustDecode(t, m3).(*Confirm), func(Result) error { return boom }); !errors.Is(err, boom) || m4 != nil {
		t.Fatalf("failed install: %v", err)
	}
	if resp.Committed(i.WG) != 0 {
		t.Fatal("failed install recorded as committed")
	}
	var rin installs
	m4, err := resp.HandleConfirm(mustDecode(t, m3).(*Confirm), rin.install)
	if err != nil || len(rin) != 1 {
		t.Fatalf("retry: %v", err)
	}
	res, err := ini.HandleAck(mustDecode(t, m4).(*Ack))
	if err != nil || !res.PSK.Equal(rin[0].PSK) {
		t.Fatalf("after retry: %v", err)
	}
}

// FuzzResponder feeds arbitrary messages to a responder that knows one
// initiator: nothing may panic, and nothing without the initiator's static
// key may get a PSK installed.
func FuzzResponder(f *testing.F) {
	i, r := newPair(f)
	ini, _ := NewInitiator(i, remote(r), 1)
	f.Add(ini.InitMessage())
	for _, b := range sampleMessages() {
		f.Add(b)
	}
	resp := NewResponder(r, directory(i, r))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Decode(b)
		if err != nil {
			return
		}
		switch m := m.(type) {
		case *Init:
			resp.HandleInit(m)
		case *Confirm:
			if _, err := resp.HandleConfirm(m, func(Result) error { return nil }); err == nil {
				t.Fatal("a fuzzed Confirm was acknowledged")
			}
		}
	})
}
