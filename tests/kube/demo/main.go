// Command kube-demo (make kube-demo) starts the Kubernetes lab of
// tests/kube/lab, installs wgcni with kubectl apply -f conf/kubernetes/,
// runs a 6-pod Deployment over the workers, shows it, and keeps it all
// running until SIGINT/SIGTERM, then removes everything it made.
package main

import (
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/wgcni/wgcni/tests/harness"
	"github.com/wgcni/wgcni/tests/kube/lab"
)

func main() {
	workers := flag.Int("workers", 2, "worker nodes")
	external := flag.Bool("external-etcd", false, "point wgcnid at the harness's TLS etcd (the external-etcd switch) instead of the etcd conf/kubernetes/ brings")
	flag.Parse()
	repo, err := harness.FindRepo()
	if err != nil {
		log.Fatal(err)
	}
	if m := lab.Missing(repo); len(m) > 0 {
		log.Fatalf("the Kubernetes lab needs: %v", m)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	start := time.Now()
	l, err := lab.New(lab.Config{Workers: *workers, EtcdTLS: *external, Logf: log.Printf})
	if err != nil {
		log.Fatal(err)
	}
	defer l.Close()
	log.Printf("cluster up in %v; installing wgcni: kubectl apply -f conf/kubernetes/", time.Since(start).Round(time.Second))
	took, err := l.InstallWgcni(*external)
	if err != nil {
		log.Print(err)
		return
	}
	log.Printf("all nodes Ready %v after the apply", took.Round(100*time.Millisecond))
	show := func(args ...string) {
		out, err := l.Kubectl(time.Minute, args...)
		fmt.Printf("$ kubectl %s\n%s", strings.Join(args, " "), out)
		if err != nil {
			log.Print(err)
		}
	}
	if _, err := l.KubectlIn(time.Minute, lab.WebDeployment("web", 6), "apply", "-f", "-"); err != nil {
		log.Print(err)
		return
	}
	show("rollout", "status", "deploy/web", "--timeout=3m")
	show("get", "nodes", "-o", "wide")
	show("get", "pods", "-A", "-o", "wide")
	fmt.Printf("\nkubectl against the lab (another shell):\n  nsenter --net=%s %s --kubeconfig %s get pods -o wide\n",
		l.ControlPlane.Path(), l.Bin+"/kubectl", l.Admin)
	fmt.Println("Ctrl-C (or kill", os.Getpid(), ") removes everything.")
	<-sig
	log.Print("removing the lab")
}
