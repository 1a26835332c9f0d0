package procfs

import (
	"os"
	"strings"
	"testing"
	"time"
)

func TestParseStat(t *testing.T) {
	// A command name with spaces and parentheses, as a process may set.
	line := "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 1000 0 0 0 " +
		"250 130 0 0 20 0 12 0 987654 1234567 890 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n"
	s, err := ParseStat([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	want := Stat{State: "S", UTime: 250, STime: 130, StartTime: 987654}
	if s != want {
		t.Errorf("ParseStat = %+v, want %+v", s, want)
	}
	if got := s.CPU(); got != 3800*time.Millisecond {
		t.Errorf("CPU() = %s, want 3.8s (380 ticks at %d Hz)", got, ClockTicks)
	}
	for _, bad := range []string{"", "4242 no-parens S 1", "4242 (short) S 1 2 3", strings.Replace(line, " 250 ", " x ", 1)} {
		if _, err := ParseStat([]byte(bad)); err == nil {
			t.Errorf("ParseStat(%q) succeeded, want an error", bad)
		}
	}
}

func TestParseStatus(t *testing.T) {
	status := "Name:\tstickyvol\nState:\tS (sleeping)\nVmPeak:\t 1265304 kB\nVmSize:\t 1265304 kB\n" +
		"VmHWM:\t   54272 kB\nVmRSS:\t   48128 kB\nThreads:\t12\n"
	s, err := ParseStatus([]byte(status))
	if err != nil {
		t.Fatal(err)
	}
	if want := (Status{RSS: 48128 << 10, PeakRSS: 54272 << 10}); s != want {
		t.Errorf("ParseStatus = %+v, want %+v", s, want)
	}
	for _, bad := range []string{
		"Name:\tkthreadd\nState:\tS (sleeping)\n",
		"VmHWM:\t 1 kB\nVmRSS:\t 12 MB\n",
		"VmHWM:\t x kB\nVmRSS:\t 1 kB\n",
	} {
		if _, err := ParseStatus([]byte(bad)); err == nil {
			t.Errorf("ParseStatus(%q) succeeded, want an error", bad)
		}
	}
}

func TestReadSelf(t *testing.T) {
	pid := os.Getpid()
	st, err := ReadStat(pid)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != "R" && st.State != "S" {
		t.Errorf("this test's state %q, want R or S", st.State)
	}
	mem, err := ReadStatus(pid)
	if err != nil {
		t.Fatal(err)
	}
	if mem.RSS == 0 || mem.PeakRSS < mem.RSS {
		t.Errorf("RSS %d, peak %d: want a positive RSS no higher than its peak", mem.RSS, mem.PeakRSS)
	}
}
