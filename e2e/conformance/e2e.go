package conformance

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// The specs `make conformance` selects by default: the External.Storage
// suites instantiated for stickyvol's driver file, without those that need a
// cluster of their own (Serial, Disruptive), take long (Slow), or need
// features and feature gates a default cluster does not have.
//
// Every spec of the (xfs) test pattern is marked Slow, because the pattern
// as a whole is, and so are the multi-volume specs of block volumes; those
// run all the same, since they are the only specs of image volumes, of
// NodeExpandVolume and of block volumes shared by pods. Go's regexps have no
// lookahead, so the skip names the patterns whose Slow specs are left out
// instead.
var (
	DefaultFocus = `External.Storage.*hostpath\.stickyvol\.dev`
	DefaultSkip  = `\[Serial\]|\[Disruptive\]|` + otherFeatures + `|\[FeatureGate:|` +
		`Dynamic PV \((default fs|filesystem volmode)\)[^\]]*\].*\[Slow\]|` +
		blockSingleVolumeSpec + `|` + btrfsRestoreSizeSpec
)

// blockSingleVolumeSpec is the one spec the local cluster cannot run: it
// writes to the block device with `dd oflag=nocache` in a shell of the test
// image, and the local stand-in for that image is the host's static
// busybox, whose shell runs its own dd applet whatever else is on PATH and
// whose dd refuses nocache ("invalid argument 'nocache' to 'oflag'"). The
// same spec on a file system volume runs, and so do the other block specs.
const blockSingleVolumeSpec = `\(block volmode\)\] multiVolume should concurrently access the single volume from pods on the same node`

// otherFeatures matches the [Feature:...] tag of every spec that needs
// something beyond a plain cluster, except [Feature:VolumeSnapshotDataSource]:
// the local cluster runs the snapshot-controller and has the snapshot CRDs,
// so the snapshottable suite runs. Without lookahead, the pattern says "a
// name that leaves the letters of VolumeSnapshotDataSource at one of its
// first eight".
var otherFeatures = func() string {
	const keep = "VolumeSn"
	alts := make([]string, len(keep))
	for i := range keep {
		alts[i] = keep[:i] + "[^" + keep[i:i+1] + "]"
	}
	return `\[Feature:(?:` + strings.Join(alts, "|") + `)`
}()

// btrfsRestoreSizeSpec is left out because it measures a volume's size with
// df in a pod, and the default class makes btrfs subvolumes: btrfs's statfs
// reports the whole file system, not a subvolume's qgroup limit, so every
// btrfs volume of a node shows the data root's size (8 GiB on the local
// cluster) and a restore into a larger claim cannot look larger than its
// source, though its limit is the larger size (its PV and NodeGetVolumeStats
// say so). A restored image volume's file system is grown to the claim
// (driver.TestSnapshotImage checks it with statfs); the suites run this spec
// only with the default file system.
const btrfsRestoreSizeSpec = `Dynamic PV \(default fs\)\] provisioning should provision correct filesystem size when restoring snapshot to larger size pvc`

// E2EConfig says how RunE2E runs the storage e2e binary.
type E2EConfig struct {
	// Binary is Binaries.E2E; DriverFile the absolute path of the test
	// driver file (test-driver.yaml).
	Binary, DriverFile string
	// Kubeconfig and Kubectl reach the cluster; some specs run kubectl
	// exec. Neither is needed for a dry run.
	Kubeconfig, Kubectl string
	// ReportDir receives junit_01.xml and e2e.log, the binary's output.
	ReportDir string
	// Focus and Skip select specs (regular expressions on their full
	// text). Defaults: DefaultFocus, DefaultSkip.
	Focus, Skip string
	// DryRun lists the selected specs without running them, and without a
	// cluster.
	DryRun bool
	// Timeout bounds the whole run (Ginkgo's suite timeout). Default: 2h.
	Timeout time.Duration
	// Out also receives the binary's output as it runs.
	Out io.Writer
}

// JUnitFile is the report the e2e framework writes into its -report-dir.
const JUnitFile = "junit_01.xml"

func (cfg E2EConfig) args() []string {
	args := []string{
		"-provider=local",
		"-storage.testdriver=" + cfg.DriverFile,
		"-ginkgo.focus=" + cmpOr(cfg.Focus, DefaultFocus),
		"-ginkgo.skip=" + cmpOr(cfg.Skip, DefaultSkip),
		"-ginkgo.timeout=" + cmpOr(cfg.Timeout, 2*time.Hour).String(),
		"-ginkgo.no-color",
		"-report-dir=" + cfg.ReportDir,
		"-e2e-output-dir=" + cfg.ReportDir,
	}
	if cfg.DryRun {
		return append(args, "-ginkgo.dry-run")
	}
	return append(args, "-kubeconfig="+cfg.Kubeconfig, "-kubectl-path="+cfg.Kubectl)
}

// RunE2E runs the e2e binary, checks that it decoded the whole driver file
// (CheckDriverFile), and returns what its JUnit report says. Failed specs
// are in the report, not in the error: the error says that the run itself
// went wrong. On ctx's end the binary gets one SIGINT, on which Ginkgo runs
// the specs' cleanups and still writes its report, and is killed two minutes
// later if it has not ended.
func RunE2E(ctx context.Context, cfg E2EConfig) (*Report, error) {
	if err := os.MkdirAll(cfg.ReportDir, 0o755); err != nil {
		return nil, err
	}
	logPath := filepath.Join(cfg.ReportDir, "e2e.log")
	log, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer log.Close()
	out := io.Writer(log)
	if cfg.Out != nil {
		out = io.MultiWriter(log, cfg.Out)
	}
	cmd := exec.CommandContext(ctx, cfg.Binary, cfg.args()...)
	cmd.Dir = cfg.ReportDir
	cmd.Stdout, cmd.Stderr = out, out
	// A process group of its own: Ctrl-C in the terminal reaches this
	// program only, which passes on exactly one interrupt. A second one
	// would make Ginkgo skip the cleanups and leave test namespaces behind.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 2 * time.Minute
	runErr := cmd.Run()

	if err := checkLoggedDriver(cfg.DriverFile, logPath); err != nil {
		return nil, err
	}
	report, err := ReadJUnit(filepath.Join(cfg.ReportDir, JUnitFile))
	if err != nil {
		if runErr != nil {
			return nil, fmt.Errorf("the e2e binary wrote no report (%w): %w; its output is in %s", runErr, err, logPath)
		}
		return nil, fmt.Errorf("the e2e binary wrote no report: %w; its output is in %s", err, logPath)
	}
	var exitErr *exec.ExitError
	if runErr != nil && !errors.As(runErr, &exitErr) {
		return report, fmt.Errorf("running %s: %w", cfg.Binary, runErr)
	}
	// A non-zero exit with a report means failed specs or a failed suite
	// setup; both are in the report.
	return report, nil
}

func checkLoggedDriver(driverFile, logPath string) error {
	log, err := os.Open(logPath)
	if err != nil {
		return err
	}
	defer log.Close()
	return CheckDriverFile(driverFile, log)
}

func cmpOr[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}
