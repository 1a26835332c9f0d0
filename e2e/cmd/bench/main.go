// Command bench measures provisioning at cluster scale on the local cluster
// (package e2e/bench): stickyvol's agents against an instant provisioner
// that does no work, a Parallel StatefulSet of N pods on kwok nodes, and the
// agents' memory with many objects of other nodes. `make bench` runs it; it
// needs root, as the cluster does.
//
//	bench                                   bring up a cluster of kwok nodes, run everything, tear down
//	bench --attach                          use the running cluster (localcluster up --nodes 0 ...), leave it up
//	bench --claims 200,1000 --runs 5        more sizes, more runs
//	bench report --driver-bench FILE        add the driver benchmark's pairs/s to the latest results, print them
//
// Results go to <cache-dir>/bench/<time>/ (results.json, chart.png), with
// <cache-dir>/bench/latest linked to it; the table and the summary line go
// to stdout, progress to stderr.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/stickyvol/stickyvol/e2e/bench"
	"github.com/stickyvol/stickyvol/e2e/cluster"
	"github.com/stickyvol/stickyvol/e2e/framework"
)

// envAttach is the variable the e2e suites also read: set, the run uses the
// cluster running from the cache directory and leaves it up.
const envAttach = "STICKYVOL_E2E_ATTACH"

// instantCommand is the hidden subcommand that runs the instant
// provisioner; the bench starts this very program with it as a process of
// the cluster.
const instantCommand = "instant-provisioner"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	args := os.Args[1:]
	command := ""
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		command, args = args[0], args[1:]
	}
	var err error
	switch command {
	case "":
		err = runBench(ctx, args, os.Stdout, os.Stderr)
	case "report":
		err = report(args, os.Stdout)
	case instantCommand:
		err = runInstant(ctx, args)
	default:
		err = fmt.Errorf("unknown command %q: want none, or report", command)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	cfg := bench.Config{Out: stdout, ClusterOut: stderr}
	claims := "200"
	var driverBench string
	timeout := time.Hour
	fs.StringVar(&cfg.CacheDir, "cache-dir", cluster.DefaultCacheDir(), "`directory` for binaries, the cluster and the results")
	fs.BoolVar(&cfg.Attach, "attach", os.Getenv(envAttach) != "", "use the cluster running from the cache directory and leave it up (default: $"+envAttach+" is set)")
	fs.IntVar(&cfg.FakeNodes, "fake-nodes", 5, "kwok nodes, each served by a stickyvol agent (5, 20 and 100 are the sizes the README speaks of)")
	fs.StringVar(&claims, "claims", claims, "comma-separated StatefulSet sizes; the summary line reports the first")
	fs.IntVar(&cfg.Runs, "runs", 3, "runs of each size and provisioner; figures are their medians")
	fs.IntVar(&cfg.Objects, "objects", 10000, "claims, and PVs, of other nodes in the memory scenario")
	fs.BoolVar(&cfg.SkipMemory, "skip-memory", false, "leave out the memory scenario")
	fs.BoolVar(&cfg.Profile, "profile", false, "take CPU and heap profiles of one agent during the first stickyvol run (agent-cpu.pprof, agent-heap.pprof in the output directory)")
	fs.StringVar(&cfg.OutDir, "out", "", "`directory` for results.json and chart.png (default: <cache-dir>/bench/<time>)")
	fs.StringVar(&driverBench, "driver-bench", "", "`file` of `go test -bench` output of ./driver/ to take the pairs/s from (as `make bench-driver` writes)")
	fs.DurationVar(&timeout, "timeout", timeout, "bound on the whole run")
	ctx, err := framework.ParseFlags(ctx, fs, args)
	if err != nil {
		return err
	}
	if cfg.Claims, err = parseCounts(claims); err != nil {
		return fmt.Errorf("--claims: %w", err)
	}
	if cfg.RepoDir, err = framework.RepoDir("."); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cfg.InstantCommand = []string{self, instantCommand}
	start := time.Now()
	cfg.Logf = func(format string, args ...any) {
		fmt.Fprintf(stderr, "[bench %5.1fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// Read before the run, so that the summary line is the last printed.
	if driverBench != "" {
		if cfg.DriverPairsPerSecond, err = readDriverBench(driverBench); err != nil {
			return err
		}
	}
	_, err = bench.Run(ctx, cfg)
	return err
}

// report adds the driver benchmark's figure to results a run wrote, and
// prints them again; `make bench` runs the driver benchmark after the
// cluster is down, on a quieter machine.
func report(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("bench report", flag.ContinueOnError)
	dir := filepath.Join(cluster.DefaultCacheDir(), "bench", "latest")
	var driverBench string
	fs.StringVar(&dir, "results", dir, "`directory` with the results.json of a run")
	fs.StringVar(&driverBench, "driver-bench", "", "`file` of `go test -bench` output of ./driver/ to take the pairs/s from")
	if err := fs.Parse(args); err != nil {
		return err
	}
	path := filepath.Join(dir, "results.json")
	res, err := bench.ReadResults(path)
	if err != nil {
		return err
	}
	if driverBench != "" {
		if res.DriverPairsPerSecond, err = readDriverBench(driverBench); err != nil {
			return err
		}
		if err := res.WriteJSON(path); err != nil {
			return err
		}
	}
	res.PrintTable(stdout)
	return nil
}

func readDriverBench(path string) (float64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	pairs, err := bench.ParseDriverBench(f)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	return pairs, nil
}

// parseCounts parses a comma-separated list of positive counts.
func parseCounts(s string) ([]int, error) {
	var counts []int
	for _, field := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(field))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%q is not a positive count", field)
		}
		counts = append(counts, n)
	}
	if len(counts) == 0 {
		return nil, errors.New("no count")
	}
	return counts, nil
}
