// Command mkimage packs host files into a single-layer OCI image tarball that
// `ctr -n k8s.io images import` loads under the given name, no registry needed:
//
//	go run ./e2e/cmd/mkimage --ref stickyvol.local/stickyvol:dev \
//	    --file bin/stickyvol:/stickyvol:0755 --entrypoint /stickyvol --out stickyvol.tar
package main

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/stickyvol/stickyvol/e2e/image"
)

// list is a repeatable string flag.
type list []string

func (l *list) String() string     { return strings.Join(*l, " ") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

type options struct {
	spec                 image.Spec
	files, dirs, links   list
	entrypoint, cmd, env list
	out                  string
}

func main() {
	var o options
	flag.StringVar(&o.spec.Ref, "ref", "", "image name, `registry/repository:tag` (required)")
	flag.Var(&o.files, "file", "`SRC:DST[:MODE]`: host file SRC at DST, octal MODE (default: SRC's permission bits); repeatable")
	flag.Var(&o.dirs, "dir", "`DST[:MODE]`: a directory, octal MODE (default 0755), e.g. /tmp:1777; repeatable")
	flag.Var(&o.links, "symlink", "`DST:TARGET`: a symlink at DST pointing to TARGET; repeatable")
	flag.Var(&o.entrypoint, "entrypoint", "one entrypoint `argument`; repeat for more")
	flag.Var(&o.cmd, "cmd", "one cmd `argument`; repeat for more")
	flag.Var(&o.env, "env", "`KEY=VALUE`; repeatable (PATH defaults to the usual one)")
	flag.StringVar(&o.spec.User, "user", "", "`user[:group]` the image runs as")
	flag.StringVar(&o.spec.WorkingDir, "workdir", "", "working `directory`")
	flag.StringVar(&o.out, "out", "", "output `tarball` (required)")
	flag.Parse()

	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(2)
	}
}

func run(o options) error {
	if o.spec.Ref == "" || o.out == "" || flag.NArg() > 0 {
		return fmt.Errorf("usage: mkimage --ref REF --out FILE [--file SRC:DST[:MODE]]... (see -h)")
	}
	spec := o.spec
	spec.Entrypoint, spec.Cmd, spec.Env = o.entrypoint, o.cmd, o.env
	for _, f := range o.files {
		file, err := parseFile(f)
		if err != nil {
			return err
		}
		spec.Files = append(spec.Files, file)
	}
	for _, d := range o.dirs {
		p, modeStr, hasMode := strings.Cut(d, ":")
		dir := image.Dir{Path: p, Mode: 0o755}
		if hasMode {
			mode, err := parseMode(modeStr)
			if err != nil {
				return fmt.Errorf("--dir %s: %w", d, err)
			}
			dir.Mode = mode
		}
		spec.Dirs = append(spec.Dirs, dir)
	}
	for _, l := range o.links {
		p, target, ok := strings.Cut(l, ":")
		if !ok {
			return fmt.Errorf("--symlink %s: want DST:TARGET", l)
		}
		spec.Symlinks = append(spec.Symlinks, image.Symlink{Path: p, Target: target})
	}
	dgst, err := image.WriteFile(o.out, spec)
	if err != nil {
		return err
	}
	fmt.Printf("%s %s %s\n", o.out, spec.Ref, dgst)
	return nil
}

// parseFile parses SRC:DST[:MODE]; SRC must not contain a colon.
func parseFile(s string) (image.File, error) {
	parts := strings.Split(s, ":")
	if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" {
		return image.File{}, fmt.Errorf("--file %s: want SRC:DST[:MODE]", s)
	}
	f := image.File{Source: parts[0], Path: parts[1]}
	if len(parts) == 3 {
		mode, err := parseMode(parts[2])
		if err != nil {
			return image.File{}, fmt.Errorf("--file %s: %w", s, err)
		}
		f.Mode = mode
		return f, nil
	}
	info, err := os.Stat(f.Source)
	if err != nil {
		return image.File{}, err
	}
	// Perm holds only the rwx bits; setuid and friends must be asked for.
	f.Mode = uint32(info.Mode().Perm())
	return f, nil
}

func parseMode(s string) (uint32, error) {
	m, err := strconv.ParseUint(s, 8, 32)
	if err != nil || m > 0o7777 {
		return 0, fmt.Errorf("mode %q: want octal permission bits such as 0755", s)
	}
	return uint32(m), nil
}
