package main

import (
	"runtime"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
)

// aeadRate measures this machine's ChaCha20-Poly1305 seal rate on one core
// (bytes/s) for payloads of size bytes: WireGuard's cipher, in the
// implementation wireguard-go uses. Same-node encryption passes every byte
// through it four times (pod encrypts, hub decrypts and re-encrypts, pod
// decrypts; opening costs what sealing does), so cores*rate/4 bounds the
// encrypted path whatever the implementation, before TCP, copies or TUN
// crossings take their share.
func aeadRate(size int, d time.Duration) float64 {
	a, _ := chacha20poly1305.New(make([]byte, chacha20poly1305.KeySize))
	nonce := make([]byte, chacha20poly1305.NonceSize)
	buf := make([]byte, size, size+a.Overhead())
	var n int
	start := time.Now()
	for time.Since(start) < d {
		for range 64 {
			a.Seal(buf[:0], nonce, buf, nil)
		}
		n += 64 * size
	}
	return float64(n) / time.Since(start).Seconds()
}

// ceiling is the highest same-node encrypted throughput (bits/s) the
// machine's cipher allows: all cores doing nothing but the four passes.
func ceiling(rate float64) float64 {
	return float64(runtime.NumCPU()) * rate * 8 / 4
}
