package bench

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
)

// Profiling the agent under the benchmark: with Config.ProfileDir set, the
// agent of the first fake node (by name) runs with --profiling on a metrics
// port of its own, and during the first stickyvol run of the first size the
// benchmark takes a CPU profile of it for ProfileSeconds, then its heap:
// agent-cpu.pprof and agent-heap.pprof in ProfileDir, for `go tool pprof`.

// profilePort is the profiled agent's metrics address port on loopback.
const profilePort = 9898

// ProfileSeconds is how long the CPU profile runs: the 200-claim
// StatefulSet's creation and most of its deletion.
const ProfileSeconds = 25

// profiledNode picks the node whose agent is profiled.
func profiledNode(nodes []string) string {
	slices.Sort(nodes)
	return nodes[0]
}

// profileArgs are that agent's extra flags.
func profileArgs() []string {
	return []string{"--profiling", "--metrics-address=127.0.0.1:" + strconv.Itoa(profilePort)}
}

// startProfile starts taking the CPU profile into dir and returns a
// function that waits for it and then takes the heap profile.
func startProfile(ctx context.Context, dir string) func() error {
	done := make(chan error, 1)
	go func() {
		done <- fetchProfile(ctx, fmt.Sprintf("profile?seconds=%d", ProfileSeconds), dir+"/agent-cpu.pprof")
	}()
	return func() error {
		if err := <-done; err != nil {
			return err
		}
		return fetchProfile(ctx, "heap", dir+"/agent-heap.pprof")
	}
}

func fetchProfile(ctx context.Context, what, file string) error {
	url := fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/%s", profilePort, what)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("profiling the agent: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("profiling the agent: %s from %s", resp.Status, url)
	}
	out, err := os.Create(file)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, resp.Body); err != nil {
		_ = out.Close()
		return err
	}
	return out.Close()
}
