package image

import (
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"path"
	"runtime"
	"strings"
)

// multiarch names the Debian library directory of each architecture.
var multiarch = map[string]string{"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu"}

// HostPrograms returns the files that run the host's programs at paths in
// an image with no libc: each program at its own path, its program
// interpreter and every shared library it needs, directly or through
// another library, at the paths where the host's loader finds them. Only
// the host's architecture can be served this way.
func HostPrograms(paths ...string) ([]File, error) {
	dirs := libraryDirs(runtime.GOARCH)
	seen := map[string]bool{}
	var files []File
	var add func(p, source string, needed []string) error
	add = func(p, source string, needed []string) error {
		if seen[p] {
			return nil
		}
		seen[p] = true
		files = append(files, File{Path: p, Source: source, Mode: 0o755})
		for _, lib := range needed {
			found, err := findLibrary(lib, dirs)
			if err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
			libNeeds, _, err := elfDeps(found)
			if err != nil {
				return err
			}
			if err := add(found, found, libNeeds); err != nil {
				return err
			}
		}
		return nil
	}
	for _, p := range paths {
		needed, interp, err := elfDeps(p)
		if err != nil {
			return nil, err
		}
		if interp != "" && !seen[interp] {
			seen[interp] = true
			files = append(files, File{Path: interp, Source: interp, Mode: 0o755})
		}
		if err := add(p, p, needed); err != nil {
			return nil, err
		}
	}
	return files, nil
}

// elfDeps reads the libraries an ELF file needs (DT_NEEDED) and its
// program interpreter (PT_INTERP), if any.
func elfDeps(p string) (needed []string, interp string, err error) {
	f, err := elf.Open(p)
	if err != nil {
		return nil, "", fmt.Errorf("reading %s: %w", p, err)
	}
	defer f.Close()
	needed, err = f.ImportedLibraries()
	if err != nil {
		return nil, "", fmt.Errorf("libraries of %s: %w", p, err)
	}
	for _, prog := range f.Progs {
		if prog.Type != elf.PT_INTERP {
			continue
		}
		b := make([]byte, prog.Filesz)
		if _, err := prog.ReadAt(b, 0); err != nil {
			return nil, "", fmt.Errorf("interpreter of %s: %w", p, err)
		}
		interp = strings.TrimRight(string(b), "\x00")
	}
	return needed, interp, nil
}

func libraryDirs(arch string) []string {
	var dirs []string
	if triple := multiarch[arch]; triple != "" {
		dirs = append(dirs, "/lib/"+triple, "/usr/lib/"+triple)
	}
	return append(dirs, "/lib64", "/usr/lib64", "/lib", "/usr/lib")
}

func findLibrary(name string, dirs []string) (string, error) {
	for _, dir := range dirs {
		p := path.Join(dir, name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		} else if !errors.Is(err, os.ErrNotExist) {
			return "", err
		}
	}
	return "", fmt.Errorf("library %s is in none of %s", name, strings.Join(dirs, ", "))
}
