package conformance

import (
	"encoding/xml"
	"fmt"
	"os"
	"regexp"
	"strings"
	"time"
)

// Spec states as Ginkgo writes them in a JUnit report (types.SpecState).
const (
	StatePassed  = "passed"
	StateSkipped = "skipped"
	StateFailed  = "failed"
)

// Spec is one spec of a run, as its JUnit report tells it.
type Spec struct {
	// Name is the spec's full text, e.g. "External Storage [Driver: ...]
	// [Testpattern: Dynamic PV (default fs)] subPath should support
	// existing directory".
	Name string
	// Suite is the storage test suite ("subPath") and Pattern the test
	// pattern ("Dynamic PV (default fs)"); both empty for other specs.
	Suite, Pattern string
	// State is passed, skipped or failed; Ginkgo's other failure states
	// (panicked, timedout, interrupted, aborted) are kept as they are.
	State string
	// Reason says why a spec was skipped or failed: the skip message, or
	// the failure's first line.
	Reason string
	Time   time.Duration
}

// Failed reports whether the spec did not pass and was not skipped.
func (s Spec) Failed() bool { return s.State != StatePassed && s.State != StateSkipped }

// Report is what a JUnit report of the e2e binary says.
type Report struct {
	// Specs are the specs the focus and skip expressions selected, in the
	// report's order (by name).
	Specs []Spec
	// Setup are the suite's setup and teardown nodes
	// ([SynchronizedBeforeSuite] ...) that did not pass: when one fails,
	// the specs do not run.
	Setup []Spec
	// NotSelected counts the specs the focus and skip expressions left out,
	// Pending those marked pending in their source.
	NotSelected, Pending int
}

// junitCase is the part of a Ginkgo JUnit <testcase> that Report needs
// (github.com/onsi/ginkgo/v2/reporters.JUnitTestCase).
type junitCase struct {
	Name    string  `xml:"name,attr"`
	Status  string  `xml:"status,attr"`
	Time    float64 `xml:"time,attr"`
	Skipped *struct {
		Message string `xml:"message,attr"`
	} `xml:"skipped"`
	Failure *junitProblem `xml:"failure"`
	Error   *junitProblem `xml:"error"`
}

// junitProblem is a <failure> or <error>. The Kubernetes e2e framework omits
// the message attribute (OmitFailureMessageAttr) and writes the whole
// failure as the element's text.
type junitProblem struct {
	Message string `xml:"message,attr"`
	Text    string `xml:",chardata"`
}

// ReadJUnit reads the JUnit report the e2e binary writes (junit_01.xml in
// its -report-dir).
func ReadJUnit(path string) (*Report, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var doc struct {
		Suites []struct {
			Cases []junitCase `xml:"testcase"`
		} `xml:"testsuite"`
	}
	if err := xml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	r := &Report{}
	for _, s := range doc.Suites {
		for _, c := range s.Cases {
			r.add(c)
		}
	}
	return r, nil
}

// Ginkgo writes every spec of the binary to the report, including those the
// focus and skip expressions left out: those are "skipped" with the bare
// message "skipped" and no run time, while a spec that skips itself
// (e2eskipper.Skipf) says "skipped - <reason>".
const skipPrefix = "skipped - "

func (r *Report) add(c junitCase) {
	name := c.Name
	leaf, rest, ok := strings.Cut(name, "] ")
	if ok && strings.HasPrefix(leaf, "[") {
		leaf, name = leaf+"]", rest
	} else {
		leaf = name // a setup node: "[SynchronizedBeforeSuite]"
	}
	spec := Spec{Name: name, State: c.Status, Time: time.Duration(c.Time * float64(time.Second))}
	spec.Suite, spec.Pattern = storageSuite(name)
	switch {
	case c.Status == "pending":
		r.Pending++
		return
	case c.Skipped != nil:
		if !strings.HasPrefix(c.Skipped.Message, skipPrefix) && c.Time == 0 {
			r.NotSelected++
			return
		}
		spec.Reason = strings.TrimPrefix(c.Skipped.Message, skipPrefix)
	case c.Failure != nil:
		spec.Reason = c.Failure.reason()
	case c.Error != nil:
		spec.Reason = c.Error.reason()
	}
	if leaf != "[It]" {
		if spec.Failed() {
			r.Setup = append(r.Setup, spec)
		}
		return
	}
	r.Specs = append(r.Specs, spec)
}

// reason returns the first line that says what went wrong: the message, or
// the first line of the text without Ginkgo's "[FAILED] " tag.
func (p *junitProblem) reason() string {
	text := p.Message
	if strings.TrimSpace(text) == "" {
		text = p.Text
	}
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		for _, tag := range []string{"[FAILED]", "[PANICKED]", "[TIMEDOUT]", "[INTERRUPTED]"} {
			line = strings.TrimSpace(strings.TrimPrefix(line, tag))
		}
		if line != "" {
			return line
		}
	}
	return "(no message)"
}

var storageSpecRE = regexp.MustCompile(`\[Testpattern: ([^\]]*)\] (\S+)`)

// storageSuite returns the storage test suite and test pattern of a spec of
// the External.Storage suites: the suite's name is the first word after
// the test pattern, without the tags that follow it ("fsgroupchangepolicy
// (Always)[LinuxOnly], ..." is the fsgroupchangepolicy suite).
func storageSuite(name string) (suite, pattern string) {
	m := storageSpecRE.FindStringSubmatch(name)
	if m == nil {
		return "", ""
	}
	suite, _, _ = strings.Cut(m[2], "[")
	return suite, m[1]
}

// Counts are a report's specs by outcome.
type Counts struct {
	Selected, Passed, Skipped, Failed int
}

// Counts counts the selected specs by outcome.
func (r *Report) Counts() Counts {
	var c Counts
	for _, s := range r.Specs {
		c.add(s)
	}
	return c
}

func (c *Counts) add(s Spec) {
	c.Selected++
	switch {
	case s.State == StatePassed:
		c.Passed++
	case s.State == StateSkipped:
		c.Skipped++
	default:
		c.Failed++
	}
}
