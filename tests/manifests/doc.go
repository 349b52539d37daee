// Package manifests holds the tests that keep the shipped deployment files
// (conf/kubernetes, conf/systemd) consistent with what wgcnid and the plugins
// actually read: flag names, paths, capabilities, the conflist.
//
// The tests decode the Kubernetes manifests strictly into the k8s.io/api
// types, so an unknown or misspelt field fails here rather than being dropped
// silently by a lenient client. Every check is also run against deliberately
// broken copies of the files (TestChecksCatchBrokenFiles) so that a check that
// cannot fail is itself a test failure.
package manifests
