package main

// -trace: where the time of one DEL goes, step by step, from strace's
// timestamps on the plugin process itself (not cnitool). strace runs with a
// seccomp filter, so the process only stops at the traced calls and the rest
// runs at full speed; steps are cut at those calls.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// tracedCalls are the system calls the steps are cut at.
const tracedCalls = "read,execve,setns,sendto,sendmsg,recvmsg,close,flock,exit_group"

// Steps, in the order they are printed.
var stepNames = []string{
	"exec, Go runtime and package init, up to reading stdin",
	"enter the pod netns, look up the link",
	"RTM_DELLINK of the pod end (both ends unregistered)",
	"leave the netns",
	"anti-spoofing: dump sets, delete elements, commit",
	"anti-spoofing: close of the socket that committed",
	"IPAM: in-process release, under the store lock",
	"IPAM: exec host-local until it exits",
	"  of which under host-local's store lock",
	"exit_group to process gone",
	"rest: Go code, untraced calls, waiting for a CPU",
	"TOTAL, exec to exit",
}

// traceDEL runs rounds ADD+DEL pairs of each side's main plugin, the sides
// interleaved, the DEL under strace, and prints the median of each step.
func traceDEL(rounds int, sides []side, pods []string) error {
	if _, err := exec.LookPath("strace"); err != nil {
		return fmt.Errorf("-trace needs strace (apt-get install strace): %w", err)
	}
	dir, err := os.MkdirTemp("", "wgp-bench-trace-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	steps := map[string]map[string][]float64{}
	for r := 0; r < rounds; r++ {
		pod := pods[r%len(pods)]
		for _, s := range sides {
			id := fmt.Sprintf("trace-%s-%d", s.label, r)
			if err := pluginRun(s, "ADD", id, pod, nil); err != nil {
				return err
			}
			out := filepath.Join(dir, fmt.Sprintf("%s-%d.strace", s.label, r))
			if err := pluginRun(s, "DEL", id, pod, []string{"strace", "-f", "--seccomp-bpf", "-tt", "-T", "-e", "trace=" + tracedCalls, "-o", out}); err != nil {
				return err
			}
			st, err := delSteps(out)
			if err != nil {
				return fmt.Errorf("%s: %w", out, err)
			}
			if steps[s.label] == nil {
				steps[s.label] = map[string][]float64{}
			}
			for k, v := range st {
				steps[s.label][k] = append(steps[s.label][k], v)
			}
		}
	}
	fmt.Printf("\nOne DEL of each side's main plugin, step by step: median ms of %d, interleaved; load average %s\n", rounds, loadavg())
	fmt.Printf("(medians per step: they need not add up to the total's median)\n\n")
	line := fmt.Sprintf("%-58s", "step")
	for _, s := range sides {
		line += fmt.Sprintf(" %14s", s.label)
	}
	fmt.Println(line)
	fmt.Println(strings.Repeat("-", len(line)))
	for _, k := range stepNames {
		line := fmt.Sprintf("%-58s", k)
		shown := false
		for _, s := range sides {
			v, ok := steps[s.label][k]
			if !ok {
				line += fmt.Sprintf(" %14s", "-")
				continue
			}
			shown = true
			line += fmt.Sprintf(" %14.2f", median(v))
		}
		if shown {
			fmt.Println(line)
		}
	}
	return nil
}

// pluginRun runs the side's main plugin directly in its node namespace,
// with the side's first plugin configuration, optionally under wrap.
func pluginRun(s side, cmd, containerID, podNS string, wrap []string) error {
	plugins, _ := s.conflist["plugins"].([]any)
	if len(plugins) == 0 {
		return fmt.Errorf("%s: no plugins in the conflist", s.label)
	}
	conf := map[string]any{}
	for k, v := range plugins[0].(map[string]any) {
		conf[k] = v
	}
	conf["name"], conf["cniVersion"] = s.conflist["name"], s.conflist["cniVersion"]
	stdin, err := json.Marshal(conf)
	if err != nil {
		return err
	}
	bin := s.plugin
	if bin == "" {
		bin = filepath.Join(filepath.SplitList(s.cniPath)[0], conf["type"].(string))
	}
	args := append([]string{"--net=" + s.nodeNS}, wrap...)
	c := exec.Command("nsenter", append(args, bin)...)
	c.Env = []string{"CNI_COMMAND=" + cmd, "CNI_CONTAINERID=" + containerID, "CNI_NETNS=" + podNS, "CNI_IFNAME=" + s.ifName,
		"CNI_PATH=" + s.cniPath, "PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	c.Stdin = bytes.NewReader(stdin)
	var out bytes.Buffer
	c.Stdout, c.Stderr = &out, &out
	if err := c.Run(); err != nil {
		return fmt.Errorf("%s: %s %s: %v: %s", s.label, cmd, podNS, err, out.String())
	}
	return nil
}

// event is one system call of an strace -f -tt -T log, an interrupted
// call and its resumption merged.
type event struct {
	t    float64 // ms since midnight
	pid  int
	call string  // the call and its arguments as strace prints them
	dur  float64 // ms, from -T
}

var (
	lineRE    = regexp.MustCompile(`^(\d+) +(\d\d):(\d\d):(\d\d\.\d+) (.*)$`)
	resumedRE = regexp.MustCompile(`^<\.\.\. \w+ resumed>(.*)$`)
	durRE     = regexp.MustCompile(`<(\d+\.\d+)>\s*$`)
	fdRE      = regexp.MustCompile(`^sendmsg\((\d+),`)
)

func parseStrace(path string) ([]event, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var evs []event
	pending := map[int]event{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		m := lineRE.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		pid, _ := strconv.Atoi(m[1])
		h, _ := strconv.Atoi(m[2])
		mi, _ := strconv.Atoi(m[3])
		sec, _ := strconv.ParseFloat(m[4], 64)
		e := event{t: (float64(h*3600+mi*60) + sec) * 1000, pid: pid, call: m[5]}
		if c, ok := strings.CutSuffix(e.call, "<unfinished ...>"); ok {
			e.call = c
			pending[pid] = e
			continue
		}
		if r := resumedRE.FindStringSubmatch(e.call); r != nil {
			if p, ok := pending[pid]; ok {
				delete(pending, pid)
				e.t, e.call = p.t, p.call+r[1]
			}
		}
		if d := durRE.FindStringSubmatch(e.call); d != nil {
			v, _ := strconv.ParseFloat(d[1], 64)
			e.dur = v * 1000
		}
		evs = append(evs, e)
	}
	sort.SliceStable(evs, func(i, j int) bool { return evs[i].t < evs[j].t })
	return evs, sc.Err()
}

// delSteps cuts one DEL's log into the steps of stepNames.
func delSteps(path string) (map[string]float64, error) {
	evs, err := parseStrace(path)
	if err != nil {
		return nil, err
	}
	if len(evs) == 0 {
		return nil, fmt.Errorf("empty trace")
	}
	first := func(from float64, match func(e event) bool) (event, bool) {
		for _, e := range evs {
			if e.t >= from && match(e) {
				return e, true
			}
		}
		return event{}, false
	}
	prefix := func(p string) func(event) bool { return func(e event) bool { return strings.HasPrefix(e.call, p) } }
	t0, end := evs[0].t, evs[len(evs)-1].t
	out := map[string]float64{}
	main, ok1 := first(t0, prefix("read(0,"))
	setns, ok2 := first(t0, prefix("setns("))
	del, ok3 := first(t0, func(e event) bool {
		return strings.Contains(e.call, "nlmsg_type=RTM_DELLINK") || strings.Contains(e.call, "nlmsg_type=0x11 ")
	})
	if !ok1 || !ok2 || !ok3 {
		return nil, fmt.Errorf("no stdin read, setns or RTM_DELLINK in the trace")
	}
	out[stepNames[0]] = main.t - t0
	out[stepNames[1]] = del.t - setns.t
	out[stepNames[2]] = del.dur
	if back, ok := first(del.t+del.dur, prefix("setns(")); ok {
		out[stepNames[3]] = back.t + back.dur - (del.t + del.dur)
	}
	var nft []event
	for _, e := range evs {
		if (strings.HasPrefix(e.call, "sendmsg(") || strings.HasPrefix(e.call, "recvmsg(")) && (strings.Contains(e.call, "NFNL") || strings.Contains(e.call, "NFT_MSG")) {
			nft = append(nft, e)
		}
	}
	var commit *event
	for i := range nft {
		if strings.Contains(nft[i].call, "BATCH_BEGIN") {
			commit = &nft[i]
		}
	}
	if len(nft) > 0 && commit != nil {
		window := nft[len(nft)-1].t + nft[len(nft)-1].dur - nft[0].t
		fd := fdRE.FindStringSubmatch(commit.call)
		if fd != nil {
			if cl, ok := first(commit.t, prefix("close("+fd[1]+")")); ok {
				out[stepNames[5]] = cl.dur
				if cl.t < nft[len(nft)-1].t { // closed within the window
					window -= cl.dur
				}
			}
		}
		out[stepNames[4]] = window
	}
	var lockEx, lockUn []event
	for _, e := range evs {
		if strings.HasPrefix(e.call, "flock(") && strings.Contains(e.call, "LOCK_EX") {
			lockEx = append(lockEx, e)
		}
		if strings.HasPrefix(e.call, "flock(") && strings.Contains(e.call, "LOCK_UN") {
			lockUn = append(lockUn, e)
		}
	}
	locked := 0.0
	if len(lockEx) > 0 && len(lockUn) > 0 {
		locked = lockUn[len(lockUn)-1].t - lockEx[0].t
	}
	if child, ok := first(t0+0.001, prefix("execve(")); ok {
		if done, ok := first(child.t, prefix("--- SIGCHLD")); ok {
			out[stepNames[7]] = done.t - child.t
			out[stepNames[8]] = locked
		}
	} else if len(lockEx) > 0 {
		out[stepNames[6]] = locked
	}
	if ex, ok := first(t0, prefix("exit_group(")); ok {
		out[stepNames[9]] = end - ex.t
	}
	total := end - t0
	out[stepNames[11]] = total
	rest := total
	for k, v := range out {
		if k != stepNames[8] && k != stepNames[11] {
			rest -= v
		}
	}
	out[stepNames[10]] = rest
	return out, nil
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
