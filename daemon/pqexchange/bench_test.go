package pqexchange

import (
	"crypto/ecdh"
	"crypto/rand"
	"testing"
	"time"
)

// BenchmarkExchange measures the CPU of one complete exchange, both sides
// (the cost of one rotation for one peer pair, without the network), next
// to a reference measured in the same run: the four X25519 operations
// (two key generations, two agreements) of the classical part of a
// WireGuard handshake's ephemeral exchange.
func BenchmarkExchange(b *testing.B) {
	i, r := newPair(b)
	resp := NewResponder(r, directory(i, r))
	install := func(Result) error { return nil }
	var epoch uint64
	b.Run("pq-exchange", func(b *testing.B) {
		// The reference, timed by hand: testing.Benchmark cannot run
		// inside a benchmark.
		const refN = 200
		start := time.Now()
		for range refN {
			x25519x4(b)
		}
		refNs := float64(time.Since(start).Nanoseconds()) / refN
		for b.Loop() {
			epoch++
			ini, err := NewInitiator(i, remote(r), epoch)
			if err != nil {
				b.Fatal(err)
			}
			m1, _ := Decode(ini.InitMessage())
			m2b, err := resp.HandleInit(m1.(*Init))
			if err != nil {
				b.Fatal(err)
			}
			m2, _ := Decode(m2b)
			m3b, err := ini.HandleResp(m2.(*Resp))
			if err != nil {
				b.Fatal(err)
			}
			m3, _ := Decode(m3b)
			m4b, err := resp.HandleConfirm(m3.(*Confirm), install)
			if err != nil {
				b.Fatal(err)
			}
			m4, _ := Decode(m4b)
			if _, err := ini.HandleAck(m4.(*Ack)); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		msgs := sampleMessages()
		b.ReportMetric(float64(len(msgs[TypeInit])+len(msgs[TypeResp])+len(msgs[TypeConfirm])+len(msgs[TypeAck])), "wire-bytes/op")
		b.ReportMetric(refNs, "ref-x25519x4-ns/op")
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/refNs, "x-ref")
	})
}

// x25519x4 is the reference: two X25519 key generations and agreements.
func x25519x4(b *testing.B) {
	x, _ := ecdh.X25519().GenerateKey(rand.Reader)
	y, _ := ecdh.X25519().GenerateKey(rand.Reader)
	if _, err := x.ECDH(y.PublicKey()); err != nil {
		b.Fatal(err)
	}
	if _, err := y.ECDH(x.PublicKey()); err != nil {
		b.Fatal(err)
	}
}
