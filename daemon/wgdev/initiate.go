package wgdev

import (
	"fmt"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Initiate makes the device start a handshake with each of peers now,
// instead of with its next packet to them. keepalive holds each peer's
// configured persistent keepalive, which is restored. Switching persistent
// keepalive from off to on sends a keepalive at once (kernel WireGuard and
// wireguard-go alike), and a keepalive without a session starts a
// handshake; no configuration call starts one directly. Like any
// initiation it is subject to WireGuard's limit of one per peer per 5 s.
func Initiate(wg *wgctrl.Client, name string, keepalive map[wgtypes.Key]time.Duration) error {
	if len(keepalive) == 0 {
		return nil
	}
	off, on, restore := make([]wgtypes.PeerConfig, 0), make([]wgtypes.PeerConfig, 0, len(keepalive)), make([]wgtypes.PeerConfig, 0)
	zero, second := time.Duration(0), time.Second
	for k, ka := range keepalive {
		if ka > 0 {
			// Already on: off first, so that switching it back on sends.
			off = append(off, wgtypes.PeerConfig{PublicKey: k, UpdateOnly: true, PersistentKeepaliveInterval: &zero})
			on = append(on, wgtypes.PeerConfig{PublicKey: k, UpdateOnly: true, PersistentKeepaliveInterval: &ka})
			continue
		}
		on = append(on, wgtypes.PeerConfig{PublicKey: k, UpdateOnly: true, PersistentKeepaliveInterval: &second})
		restore = append(restore, wgtypes.PeerConfig{PublicKey: k, UpdateOnly: true, PersistentKeepaliveInterval: &zero})
	}
	for _, step := range [][]wgtypes.PeerConfig{off, on, restore} {
		if len(step) == 0 {
			continue
		}
		if err := wg.ConfigureDevice(name, wgtypes.Config{Peers: step}); err != nil {
			return fmt.Errorf("trigger handshakes on WireGuard device %s: %w", name, err)
		}
	}
	return nil
}
