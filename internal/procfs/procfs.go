// Package procfs reads what the local cluster and the benchmarks need of a
// process from /proc/<pid>: its state and start time (to tell a live process
// from a new one under the same PID), the CPU time it has used, and its
// resident memory now and at its peak.
package procfs

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// ClockTicks is USER_HZ, the unit of the times in /proc/<pid>/stat. The
// kernel ABI fixes it at 100 on every architecture Go builds for
// (sysconf(_SC_CLK_TCK) returns it), so no cgo is needed to ask.
const ClockTicks = 100

// Stat is what this package reads of /proc/<pid>/stat.
type Stat struct {
	// State is the one-letter process state: R, S, D, Z, ...
	State string
	// UTime and STime are the CPU time spent in user and kernel mode, in
	// clock ticks (fields 14 and 15).
	UTime, STime uint64
	// StartTime is when the process started, in clock ticks since boot
	// (field 22).
	StartTime uint64
}

// CPU is the CPU time the process has used, user and kernel.
func (s Stat) CPU() time.Duration {
	return time.Duration(s.UTime+s.STime) * time.Second / ClockTicks
}

// ParseStat parses the content of /proc/<pid>/stat. The command name, field
// 2, is in parentheses and may itself hold spaces and parentheses: the
// fields that follow start after the last ')'.
func ParseStat(data []byte) (Stat, error) {
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return Stat{}, errors.New("no command name in parentheses")
	}
	// f[0] is field 3 (state), so field n is f[n-3].
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 20 {
		return Stat{}, fmt.Errorf("%d fields after the command name, want at least 20", len(f))
	}
	var s Stat
	s.State = f[0]
	var err error
	for _, x := range []struct {
		dst   *uint64
		field int
	}{{&s.UTime, 14}, {&s.STime, 15}, {&s.StartTime, 22}} {
		if *x.dst, err = strconv.ParseUint(f[x.field-3], 10, 64); err != nil {
			return Stat{}, fmt.Errorf("field %d: %w", x.field, err)
		}
	}
	return s, nil
}

// ReadStat reads /proc/<pid>/stat.
func ReadStat(pid int) (Stat, error) { return read(pid, "stat", ParseStat) }

// read parses the file /proc/<pid>/<name>.
func read[T any](pid int, name string, parse func([]byte) (T, error)) (T, error) {
	var zero T
	path := fmt.Sprintf("/proc/%d/%s", pid, name)
	data, err := os.ReadFile(path)
	if err != nil {
		return zero, err
	}
	v, err := parse(data)
	if err != nil {
		return zero, fmt.Errorf("%s: %w", path, err)
	}
	return v, nil
}

// Status is what this package reads of /proc/<pid>/status, in bytes.
type Status struct {
	// RSS is the resident set size now (VmRSS).
	RSS uint64
	// PeakRSS is the highest RSS since the process started or since
	// ResetPeakRSS (VmHWM).
	PeakRSS uint64
}

// ParseStatus parses the content of /proc/<pid>/status. A kernel thread
// or a zombie has no Vm* lines: that is an error, as there is no memory to
// report.
func ParseStatus(data []byte) (Status, error) {
	var s Status
	found := 0
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		key, value, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		var dst *uint64
		switch key {
		case "VmRSS":
			dst = &s.RSS
		case "VmHWM":
			dst = &s.PeakRSS
		default:
			continue
		}
		f := strings.Fields(value)
		if len(f) != 2 || f[1] != "kB" {
			return Status{}, fmt.Errorf("%s: %q is not a size in kB", key, strings.TrimSpace(value))
		}
		kb, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			return Status{}, fmt.Errorf("%s: %w", key, err)
		}
		*dst = kb << 10
		found++
	}
	if err := sc.Err(); err != nil {
		return Status{}, err
	}
	if found < 2 {
		return Status{}, errors.New("no VmRSS and VmHWM lines")
	}
	return s, nil
}

// ReadStatus reads /proc/<pid>/status.
func ReadStatus(pid int) (Status, error) { return read(pid, "status", ParseStatus) }

// ResetPeakRSS sets the process's peak RSS (VmHWM) back to its RSS now, so
// that a later ReadStatus reports the peak of what came after (proc(5),
// /proc/<pid>/clear_refs, value 5; needs the right to write there).
func ResetPeakRSS(pid int) error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0)
}
