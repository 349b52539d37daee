//go:build tools

// The lab builds agnhost (a main package) from this module; this keeps
// its dependencies in go.mod and go.sum (go mod tidy).
package k8s

import _ "k8s.io/kubernetes/test/images/agnhost"
