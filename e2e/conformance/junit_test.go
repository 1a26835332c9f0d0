package conformance

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestReadJUnit(t *testing.T) {
	r, err := ReadJUnit("testdata/junit_01.xml")
	if err != nil {
		t.Fatal(err)
	}
	const prefix = "External Storage [Driver: hostpath.stickyvol.dev] [Testpattern: "
	want := []Spec{
		{
			Name:    prefix + "Dynamic PV (default fs)] fsgroupchangepolicy (Always)[LinuxOnly], pod created with an initial fsgroup, new pod fsgroup applied to volume contents",
			Suite:   "fsgroupchangepolicy",
			Pattern: "Dynamic PV (default fs)",
			State:   StatePassed,
			Time:    12250 * time.Millisecond,
		},
		{
			Name:  prefix + "Dynamic PV (default fs)] provisioning should provision storage with mount options",
			Suite: "provisioning", Pattern: "Dynamic PV (default fs)", State: StateSkipped,
			Reason: `Driver "hostpath.stickyvol.dev" does not define supported mount option - skipping`,
			Time:   400 * time.Millisecond,
		},
		{
			Name:  prefix + "Dynamic PV (default fs)] provisioning should provision storage with pvc data source",
			Suite: "provisioning", Pattern: "Dynamic PV (default fs)", State: StateSkipped,
			Reason: `Driver "hostpath.stickyvol.dev" does not support cloning - skipping`,
			Time:   300 * time.Millisecond,
		},
		{
			Name:  prefix + "Dynamic PV (immediate binding)] topology should provision a volume and schedule a pod with AllowedTopologies",
			Suite: "topology", Pattern: "Dynamic PV (immediate binding)", State: StateFailed,
			Reason: "Timed out after 300.000s.",
			Time:   300500 * time.Millisecond,
		},
		{
			Name:  prefix + "Dynamic PV (default fs)] subPath should support existing directory",
			Suite: "subPath", Pattern: "Dynamic PV (default fs)", State: "timedout",
			Reason: "A suite timeout occurred",
			Time:   600 * time.Second,
		},
	}
	if diff := cmp.Diff(want, r.Specs); diff != "" {
		t.Errorf("specs (-want +got):\n%s", diff)
	}
	// The spec the skip expression left out is counted, not listed; the
	// setup node that passed is neither.
	if r.NotSelected != 1 || r.Pending != 1 {
		t.Errorf("NotSelected = %d, Pending = %d; want 1, 1", r.NotSelected, r.Pending)
	}
	wantSetup := []Spec{{Name: "[SynchronizedAfterSuite]", State: "panicked", Reason: "runtime error: invalid memory address", Time: 100 * time.Millisecond}}
	if diff := cmp.Diff(wantSetup, r.Setup); diff != "" {
		t.Errorf("setup nodes that did not pass (-want +got):\n%s", diff)
	}
	if got, want := r.Counts(), (Counts{Selected: 5, Passed: 1, Skipped: 2, Failed: 2}); got != want {
		t.Errorf("counts %+v, want %+v", got, want)
	}
}

func TestReadJUnitErrors(t *testing.T) {
	if _, err := ReadJUnit("testdata/missing.xml"); err == nil {
		t.Error("a missing report gave no error")
	}
	if _, err := ReadJUnit("test-driver.yaml"); err == nil {
		t.Error("a file that is not XML gave no error")
	}
}

func TestWriteSummary(t *testing.T) {
	r, err := ReadJUnit("testdata/junit_01.xml")
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	WriteSummary(&buf, "External.Storage", r, 61*time.Second+400*time.Millisecond)
	out := buf.String()
	for _, want := range []string{
		"=== External.Storage: 1 passed, 2 skipped, 2 failed of 5 selected (1 left out by focus and skip, 1 pending) in 1m1.4s",
		"suite [SynchronizedAfterSuite] panicked: runtime error: invalid memory address",
		// The table by suite, with its total line.
		"fsgroupchangepolicy         1       1        0       0",
		"total         5       1        2       2",
		// Skips grouped by reason, failures with their name and reason.
		`1  Driver "hostpath.stickyvol.dev" does not support cloning - skipping`,
		"[failed] " + r.Specs[3].Name + "\n        Timed out after 300.000s. (after 5m1s)",
		"[timedout] " + r.Specs[4].Name + "\n        A suite timeout occurred (after 10m0s)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
}

func TestWriteSelection(t *testing.T) {
	r := &Report{Specs: []Spec{{Suite: "subPath"}, {Suite: "topology"}, {Suite: "subPath"}, {}}}
	var buf bytes.Buffer
	WriteSelection(&buf, r)
	want := "     SUITE  SPECS\n" +
		"   (other)      1\n" +
		"   subPath      2\n" +
		"  topology      1\n" +
		"     total      4\n"
	if diff := cmp.Diff(want, buf.String()); diff != "" {
		t.Errorf("selection table (-want +got):\n%s", diff)
	}
}
