package harness

// NewNS creates an extra namespace for a test (named <tag>-<run>-<suffix>,
// e.g. for pods wired by hand rather than through AddPod). It is removed,
// with every process inside it, when the cluster is closed.
func (c *Cluster) NewNS(suffix string) (NS, error) {
	n, err := createNS(c.name(suffix))
	if err != nil {
		return NS{}, err
	}
	c.onClose(func() {
		if err := deleteNS(n); err != nil {
			c.Cfg.Logf("harness: %v", err)
		}
	})
	return n, nil
}
