package image

import (
	"archive/tar"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
)

// File is a regular file in the image, owned by root.
type File struct {
	// Path is the absolute path in the image, e.g. "/stickyvol".
	Path string
	// Source is a host file whose contents are copied; when empty, Data is
	// the contents.
	Source string
	Data   []byte
	// Mode holds Unix permission bits as chmod(1) takes them, setuid,
	// setgid and sticky included (e.g. 0o755, 0o4755).
	Mode uint32
}

// Dir is a directory in the image, owned by root. Parents of every entry are
// created with mode 0o755 unless listed here.
type Dir struct {
	Path string
	Mode uint32 // e.g. 0o1777 for /tmp
}

// Symlink is a symbolic link at Path pointing to Target (relative or absolute).
type Symlink struct {
	Path   string
	Target string
}

// entry is one member of the layer tar.
type entry struct {
	hdr    tar.Header
	source string // host file to copy, for a File with Source
	data   []byte
}

// entries returns the layer's members in a fixed order (by path, so every
// directory comes before what it holds), with implicit parent directories.
func (s Spec) entries() ([]entry, error) {
	byName := map[string]entry{}
	add := func(p string, e entry) error {
		clean, err := tarName(p)
		if err != nil {
			return err
		}
		if _, dup := byName[clean]; dup {
			return fmt.Errorf("%w: %s is given twice", errBadEntry, p)
		}
		e.hdr.Name = clean
		e.hdr.ModTime = epoch
		byName[clean] = e
		return nil
	}
	for _, f := range s.Files {
		e, err := fileEntry(f)
		if err == nil {
			err = add(f.Path, e)
		}
		if err != nil {
			return nil, err
		}
	}
	for _, d := range s.Dirs {
		if err := checkMode(d.Path, d.Mode); err != nil {
			return nil, err
		}
		if err := add(d.Path, entry{hdr: tar.Header{Typeflag: tar.TypeDir, Mode: int64(d.Mode)}}); err != nil {
			return nil, err
		}
	}
	for _, l := range s.Symlinks {
		if l.Target == "" {
			return nil, fmt.Errorf("%w: symlink %s has no target", errBadEntry, l.Path)
		}
		if err := add(l.Path, entry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Linkname: l.Target, Mode: 0o777}}); err != nil {
			return nil, err
		}
	}

	explicit := make([]string, 0, len(byName))
	for n := range byName {
		explicit = append(explicit, n)
	}
	for _, n := range explicit {
		for dir := path.Dir(n); dir != "."; dir = path.Dir(dir) {
			parent, ok := byName[dir]
			if !ok {
				byName[dir] = entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: dir, Mode: 0o755, ModTime: epoch}}
				continue
			}
			if parent.hdr.Typeflag != tar.TypeDir {
				return nil, fmt.Errorf("%w: /%s is inside /%s, which is not a directory", errBadEntry, n, dir)
			}
		}
	}

	names := make([]string, 0, len(byName))
	for n := range byName {
		names = append(names, n)
	}
	sort.Strings(names) // a path sorts before every path it is a prefix of
	out := make([]entry, 0, len(names))
	for _, n := range names {
		e := byName[n]
		if e.hdr.Typeflag == tar.TypeDir {
			e.hdr.Name += "/"
		}
		out = append(out, e)
	}
	return out, nil
}

func fileEntry(f File) (entry, error) {
	if err := checkMode(f.Path, f.Mode); err != nil {
		return entry{}, err
	}
	e := entry{hdr: tar.Header{Typeflag: tar.TypeReg, Mode: int64(f.Mode)}, source: f.Source, data: f.Data}
	if f.Source == "" {
		e.hdr.Size = int64(len(f.Data))
		return e, nil
	}
	if f.Data != nil {
		return entry{}, fmt.Errorf("%w: %s has both a source file and data", errBadEntry, f.Path)
	}
	info, err := os.Stat(f.Source)
	if err != nil {
		return entry{}, err
	}
	if !info.Mode().IsRegular() {
		return entry{}, fmt.Errorf("%w: source %s of %s is not a regular file", errBadEntry, f.Source, f.Path)
	}
	e.hdr.Size = info.Size()
	return e, nil
}

// tarName turns an absolute image path into a tar member name ("/bin/sh"
// becomes "bin/sh").
func tarName(p string) (string, error) {
	if !path.IsAbs(p) {
		return "", fmt.Errorf("%w: path %q must be absolute", errBadEntry, p)
	}
	clean := strings.TrimPrefix(path.Clean(p), "/")
	if clean == "" {
		return "", fmt.Errorf("%w: path %q names the root directory", errBadEntry, p)
	}
	return clean, nil
}

func checkMode(p string, mode uint32) error {
	if mode&^0o7777 != 0 {
		return fmt.Errorf("%w: %s: mode %#o has bits beyond 0o7777", errBadEntry, p, mode)
	}
	return nil
}

// write adds the entry to the layer. Its header mode carries the Unix bits
// as given: archive/tar writes Header.Mode as is, and only FileInfoHeader
// would translate Go's fs.ModeSetuid/ModeSticky flags, which live in
// different bits than chmod's 0o4000/0o1000.
func (e entry) write(tw *tar.Writer) error {
	hdr := e.hdr
	if err := tw.WriteHeader(&hdr); err != nil {
		return fmt.Errorf("/%s: %w", hdr.Name, err)
	}
	if hdr.Typeflag != tar.TypeReg {
		return nil
	}
	if e.source == "" {
		_, err := tw.Write(e.data)
		return err
	}
	f, err := os.Open(e.source)
	if err != nil {
		return err
	}
	defer f.Close()
	// tar.Writer refuses more bytes than the header's size and the next
	// header fails if fewer arrived, so a file that changes size while it
	// is copied is an error here, not a corrupt layer.
	if _, err := io.Copy(tw, f); err != nil {
		return fmt.Errorf("copying %s to /%s: %w", e.source, hdr.Name, err)
	}
	return nil
}
