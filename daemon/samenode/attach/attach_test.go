package attach

import "testing"

func TestWGIfName(t *testing.T) {
	if got := WGIfName("eth0"); got != "wg-eth0" {
		t.Errorf("WGIfName = %q", got)
	}
	if got := WGIfName("averyverylongifname"); len(got) > 15 {
		t.Errorf("WGIfName too long: %q", got)
	}
}
