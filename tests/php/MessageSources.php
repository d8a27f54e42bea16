<?php

declare(strict_types=1);

namespace JoinBlock\Tests;

/**
 * The texts a user can meet, read out of the sources: every prose string literal of the
 * extension's non-test Rust code (src/), of the polyfill (php/polyfill/, php/joinblock.php) and
 * of the Site Health report (php/site-health.php), minus SQL and the few other texts that
 * are not messages (NOT_MESSAGES). Messages are built from parts (`cannot {action}: {detail}`, an action
 * `connect to MySQL server {server}`), so each literal is one part; its placeholders (Rust's
 * `{…}`, sprintf's `%s`, PHP's interpolated variables) are normalised to `…`.
 *
 * Reading every literal rather than known call sites is deliberate: a message written in a
 * new way is still found, and a literal that is not a message has to be named here, with why.
 */
final class MessageSources
{
    /** The normalised form of a placeholder. */
    public const HOLE = '…';

    /**
     * Prose literals that are not messages, by file, each with why. The test checks that each
     * still occurs, so the list cannot hide a message by going stale.
     */
    public const NOT_MESSAGES = [
        'src/php/mod.rs' => [
            // php --ri row labels (docs/operations.md shows the table), not messages.
            'joinblock support', 'thread safety', 'lock backend in effect', 'lock directory in effect',
            'MySQL server for locks', 'MySQL connect timeout', 'timed lock waits', 'this process, all threads',
            'this process', 'locks acquired (…)', 'locks that waited (…)', 'lock timeouts (…)',
            'Action Network requests (…)', 'tag cache entries (…)', 'shared state (tag map, pacing)',
            'shared tag map entries', 'shared state warning', '… in … group(s)', 'Action Network URL', '(not set)',
        ],
        'src/php/exceptions.rs' => [
            // Arguments of expect(): invariants of module startup, never met at run time.
            'exception classes are registered at module startup', 'SPL registers RuntimeException before extensions load',
        ],
        'php/polyfill/action-network.php' => [
            // Reason phrases the polyfill's curl client fills in, as HTTP names them.
            'Too Many Requests', 'Service Unavailable',
            // Request headers.
            'Accept: application/json', 'OSDI-API-Token: …',
        ],
        'php/polyfill/support.php' => [
            // The operating system's own words (strerror), quoted inside our messages.
            'Operation not permitted', 'No such file or directory', 'Input/output error', 'No such device or address',
            'Resource temporarily unavailable', 'Cannot allocate memory', 'Permission denied', 'File exists',
            'Invalid argument', 'Too many open files in system', 'Too many open files', 'No space left on device',
            'Read-only file system', 'File name too long', 'No locks available', 'Too many levels of symbolic links',
            'Network is unreachable', 'Connection reset by peer', 'Connection timed out', 'Connection refused',
            'No route to host', 'Disk quota exceeded', 'Not a directory', 'Is a directory',
        ],
        'src/action_network/shared.rs' => [
            // The first words of the host's shared-state files, which name their format.
            'joinblock-pace 1', 'joinblock-tags 1',
        ],
        'php/polyfill/shared-state.php' => [
            // The first words of the host's shared-state files, which name their format.
            'joinblock-pace 1', 'joinblock-tags 1',
        ],
        'php/site-health.php' => [
            // The Info tab's row labels and the section's description (docs/wordpress.md).
            'joinblock site health probe', 'joinblock: member locks and Action Network tag checks',
            'Member locks and Action Network tag checks run in the native extension.', 'PHP extension',
            'plain-PHP polyfill (the extension is not loaded)', 'Lock backend', 'Lock directory',
            'MySQL server for locks', 'Action Network URL', 'Locks acquired (this PHP process)',
            'Locks that waited (this PHP process)', 'Lock timeouts (this PHP process)',
            'Action Network requests (this PHP process)', 'not kept by the polyfill, which keeps nothing beyond one request',
            'The member lock and Action Network tag check used by the Join Flow plugin.', 'Join Flow',
            // What the extension adds, shown under the "not installed" status (docs/wordpress.md).
            'Its plain-PHP stand-in is doing the work, correctly but with less. The extension adds:',
            'a lock that never follows a symbolic link planted at the lock path;',
            'an Action Network tag cache, HTTP connection and MySQL connection kept across requests by each PHP-FPM worker, so tag checks send fewer requests;',
            "MySQL locks that a dead holder's child processes cannot keep alive, and lock counters in this report.",
            'How to install the joinblock extension', '(not set)',
            // Markup around the site's own install link.
            '<p><a href="…" target="_blank" rel="noopener">…</a></p>',
        ],
    ];

    /** @return list<string> the files read, relative to the repository */
    public static function files(string $root): array
    {
        $rust = new \RecursiveIteratorIterator(new \RecursiveDirectoryIterator("$root/src", \FilesystemIterator::SKIP_DOTS));
        $files = [];
        foreach ($rust as $file) {
            if (str_ends_with($file->getPathname(), '.rs')) {
                $files[] = substr($file->getPathname(), strlen($root) + 1);
            }
        }
        foreach ([...glob("$root/php/polyfill/*.php"), "$root/php/joinblock.php", "$root/php/site-health.php"] as $file) {
            $files[] = substr($file, strlen($root) + 1);
        }
        sort($files);
        return $files;
    }

    /**
     * Every prose literal of the file, normalised, the listed non-messages included.
     *
     * @return list<string>
     */
    public static function literals(string $root, string $file): array
    {
        $code = (string) file_get_contents("$root/$file");
        $literals = str_ends_with($file, '.rs') ? self::rustLiterals($code) : self::phpLiterals($code);
        return array_values(array_unique(array_filter(array_map(self::tidy(...), $literals), self::isProse(...))));
    }

    /**
     * The messages: every file's prose literals but the listed non-messages.
     *
     * @return array<string, list<string>> file => messages
     */
    public static function messages(string $root): array
    {
        $messages = [];
        foreach (self::files($root) as $file) {
            $literals = array_filter(self::literals($root, $file), fn (string $text): bool => !self::isSql($text));
            $messages[$file] = array_values(array_diff($literals, self::NOT_MESSAGES[$file] ?? []));
        }
        return $messages;
    }

    /** Text a person reads: words apart, not a name, a path or a regular expression. */
    private static function isProse(string $text): bool
    {
        return str_contains($text, ' ') && preg_match_all('~(?<![\\\\\w])[A-Za-z]{2,}\b~', $text) >= 2;
    }

    /**
     * SQL sent to the database server, whole or a piece of a statement split over lines: it
     * has a keyword in capitals that no message uses.
     */
    private static function isSql(string $text): bool
    {
        return (bool) preg_match('~\\b(SELECT|INSERT|UPDATE|DELETE|CREATE|FROM|WHERE|VALUES|INTERVAL|PRIMARY KEY|NOT NULL|ENGINE|DATETIME|VARCHAR|CHAR|TIMESTAMPDIFF|UTC_TIMESTAMP|GREATEST|LEAST|SET NAMES|SET STATEMENT|SESSION|IS NULL|BETWEEN|ORDER BY|SHA1|AND expires|AND blocked_until)\\b~', $text);
    }

    /** Collapses white space and runs of placeholders. */
    private static function tidy(string $text): string
    {
        $text = (string) preg_replace('~\s+~', ' ', $text);
        return (string) preg_replace('~…(\s*…)+~u', self::HOLE, $text);
    }

    /**
     * String literals of Rust code outside `#[cfg(test)]` modules and outside comments, with
     * escapes decoded and format placeholders made holes.
     *
     * @return list<string>
     */
    private static function rustLiterals(string $code): array
    {
        $code = (string) preg_replace('~#\[cfg\(test\)\]\s*mod tests \{.*~s', '', $code);
        $literals = [];
        $length = strlen($code);
        for ($i = 0; $i < $length; $i++) {
            $c = $code[$i];
            $next = $code[$i + 1] ?? '';
            if ($c === '/' && $next === '/') {
                $i = (int) (strpos($code, "\n", $i) ?: $length);
            } elseif ($c === '/' && $next === '*') {
                $i = (int) (strpos($code, '*/', $i + 2) ?: $length) + 1;
            } elseif ($c === '\'') {
                // A char literal ('"', '\''), or a lifetime ('static), which has no closing quote.
                if (preg_match('~\G\'(\\\\.[^\']*|[^\\\\\'])\'~A', $code, $m, 0, $i)) {
                    $i += strlen($m[0]) - 1;
                }
            } elseif (preg_match('~\G(b?)r(#*)"~A', $code, $m, 0, $i) && !ctype_alnum($code[$i - 1] ?? ' ') && ($code[$i - 1] ?? '') !== '_') {
                $end = strpos($code, '"' . $m[2], $i + strlen($m[0]));
                $body = substr($code, $i + strlen($m[0]), $end - $i - strlen($m[0]));
                $i = $end + strlen($m[2]);
                if ($m[1] === '') {
                    $literals[] = self::rustPlaceholders($body);
                }
            } elseif ($c === '"') {
                $byte = ($code[$i - 1] ?? '') === 'b';
                $body = '';
                for ($i++; $i < $length && $code[$i] !== '"'; $i++) {
                    if ($code[$i] !== '\\') {
                        $body .= $code[$i];
                        continue;
                    }
                    $escape = $code[++$i];
                    if ($escape === "\n") {
                        // A line continuation: the newline and the next line's indentation go.
                        while ($i + 1 < $length && ctype_space($code[$i + 1])) {
                            $i++;
                        }
                    } else {
                        $body .= ['n' => "\n", 't' => "\t", 'r' => "\r", '0' => "\0"][$escape] ?? $escape;
                    }
                }
                if (!$byte) {
                    $literals[] = self::rustPlaceholders($body);
                }
            }
        }
        return $literals;
    }

    /** `{name}`, `{:.3}`, `{href:?}` become holes; `{{` and `}}` are braces. */
    private static function rustPlaceholders(string $text): string
    {
        $text = (string) preg_replace('~\{[\w.]*(:[^{}]*)?\}(?!\})~', self::HOLE, str_replace(['{{', '}}'], ["\x01", "\x02"], $text));
        return str_replace(["\x01", "\x02"], ['{', '}'], $text);
    }

    /**
     * String literals of PHP code, an interpolated string as one literal with a hole for each
     * variable, sprintf's conversions made holes.
     *
     * @return list<string>
     */
    private static function phpLiterals(string $code): array
    {
        $literals = [];
        $inside = null;
        foreach (token_get_all($code) as $token) {
            if ($token === '"') {
                if ($inside === null) {
                    $inside = '';
                } else {
                    $literals[] = self::sprintfPlaceholders($inside);
                    $inside = null;
                }
            } elseif ($inside !== null) {
                if (is_array($token) && $token[0] === T_ENCAPSED_AND_WHITESPACE) {
                    $inside .= self::doubleQuoted($token[1]);
                } elseif (!str_ends_with($inside, self::HOLE)) {
                    $inside .= self::HOLE;
                }
            } elseif (is_array($token) && $token[0] === T_CONSTANT_ENCAPSED_STRING) {
                $literals[] = self::sprintfPlaceholders($token[1][0] === '\''
                    ? strtr(substr($token[1], 1, -1), ['\\\'' => '\'', '\\\\' => '\\'])
                    : self::doubleQuoted(substr($token[1], 1, -1)));
            }
        }
        return $literals;
    }

    private static function doubleQuoted(string $text): string
    {
        return strtr($text, ['\\"' => '"', '\\$' => '$', '\\\\' => '\\', '\\n' => "\n", '\\t' => "\t"]);
    }

    private static function sprintfPlaceholders(string $text): string
    {
        $text = (string) preg_replace('~%(?!%)[-+ 0#]*\d*(\.\d+)?[sdfFu]~', self::HOLE, $text);
        return str_replace('%%', '%', $text);
    }
}
