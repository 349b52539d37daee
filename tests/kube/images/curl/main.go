// Command curl is the little of curl that Kubernetes' e2e network checks
// run inside the agnhost image (`curl -g -q -s [--max-time N]
// [--connect-timeout N] URL`): an HTTP GET that prints the body. The lab
// builds agnhost's image offline and Debian's curl is not static.
package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"
)

func main() {
	maxTime, connect := 0*time.Second, 0*time.Second
	url := ""
	args := os.Args[1:]
	for i := 0; i < len(args); i++ {
		switch a := args[i]; a {
		case "-g", "-q", "-s", "--silent", "-f", "--fail":
		case "--max-time", "-m", "--connect-timeout":
			if i+1 >= len(args) {
				fail("%s needs a value", a)
			}
			v, err := strconv.ParseFloat(args[i+1], 64)
			if err != nil {
				fail("%s %q: %v", a, args[i+1], err)
			}
			if a == "--connect-timeout" {
				connect = time.Duration(v * float64(time.Second))
			} else {
				maxTime = time.Duration(v * float64(time.Second))
			}
			i++
		default:
			url = a
		}
	}
	if url == "" {
		fail("no URL")
	}
	ctx := context.Background()
	if maxTime > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, maxTime)
		defer cancel()
	}
	d := &net.Dialer{Timeout: connect}
	c := &http.Client{Transport: &http.Transport{DialContext: d.DialContext, Proxy: nil}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		fail("%v", err)
	}
	resp, err := c.Do(req)
	if err != nil {
		fail("%v", err)
	}
	defer resp.Body.Close()
	if _, err := io.Copy(os.Stdout, resp.Body); err != nil {
		fail("%v", err)
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "curl: "+format+"\n", args...)
	os.Exit(7)
}
