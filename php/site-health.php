<?php

/**
 * WordPress Site Health for joinblock (Tools → Site Health), loaded with the polyfill by the
 * Composer package's `autoload.files`; the plugin may also `require_once` it after WordPress
 * has loaded. Outside WordPress (no `add_filter()`) it defines and does nothing.
 *
 * - Status tab, test "joinblock": good when the extension is loaded; recommended when the
 *   polyfill stands in; critical when the lock directory in effect (and WordPress's temporary
 *   directory, which the plugin passes as `dir`) is missing or not writable by PHP, or when the
 *   mysql backend is in effect and its server cannot be reached or refuses the lock.
 * - Info tab, section "joinblock": implementation and version, the settings in effect, this
 *   process's counters. Never a password or an API key: joinblock_status() holds none.
 *
 * Needs joinblock_status(), from the extension or php/joinblock.php.
 */

declare(strict_types=1);

namespace JoinBlock\WordPress;

if (\function_exists('add_filter') && !\class_exists(SiteHealth::class, false)) {
    /** The Site Health test and the Info section. */
    final class SiteHealth
    {
        public const TEST = 'joinblock';
        public const TEXT_DOMAIN = 'joinblock';
        /** The key the reachability check locks and releases at once (never a member's key). */
        public const PROBE_KEY = 'joinblock site health probe';

        public static function register(): void
        {
            add_filter('site_status_tests', [self::class, 'addTest']);
            add_filter('debug_information', [self::class, 'addSection']);
        }

        /**
         * @param array<string, array<string, mixed>> $tests
         * @return array<string, array<string, mixed>>
         */
        public static function addTest(array $tests): array
        {
            $tests['direct'][self::TEST] = [
                'label' => __('joinblock: member locks and Action Network tag checks', 'joinblock'),
                'test' => [self::class, 'test'],
            ];
            return $tests;
        }

        /** @return array<string, mixed> the test's result, as Site Health shows it */
        public static function test(): array
        {
            $status = joinblock_status();
            $problems = self::problems($status);
            if ($problems !== []) {
                $items = implode('', array_map(static fn (string $p) => '<li>' . esc_html($p) . '</li>', $problems));
                return self::result(
                    'critical',
                    __('Member locks cannot be taken', 'joinblock'),
                    '<p>' . esc_html__('Joins and payment webhooks for the same member are not serialised until this is fixed:', 'joinblock') . "</p><ul>$items</ul>",
                    'red'
                );
            }
            if ($status['implementation'] === 'extension') {
                return self::result(
                    'good',
                    /* translators: %s: the extension's version */
                    sprintf(__('The joinblock extension %s is loaded', 'joinblock'), $status['version']),
                    '<p>' . esc_html__('Member locks and Action Network tag checks run in the native extension.', 'joinblock') . '</p>',
                    'blue'
                );
            }
            // No public address is known yet: the README that comes with the package, unless the
            // site names a page (filter joinblock_install_url).
            $url = (string) apply_filters('joinblock_install_url', '');
            return self::result(
                'recommended',
                __('The joinblock PHP extension is not installed', 'joinblock'),
                '<p>' . esc_html__('Its plain-PHP stand-in is doing the work, correctly but with less. The extension adds:', 'joinblock') . '</p><ul><li>'
                . esc_html__('a lock that never follows a symbolic link planted at the lock path;', 'joinblock') . '</li><li>'
                . esc_html__('an Action Network tag cache, HTTP connection and MySQL connection kept across requests by each PHP-FPM worker, so tag checks send fewer requests;', 'joinblock') . '</li><li>'
                . esc_html__('MySQL locks that a dead holder\'s child processes cannot keep alive, and lock counters in this report.', 'joinblock') . '</li></ul>',
                'orange',
                $url === ''
                    ? '<p>' . esc_html(sprintf(
                        /* translators: %s: the path of the package's README.md */
                        __('How to install the joinblock extension: the section "Install (site admins)" of %s', 'joinblock'),
                        \dirname(__DIR__) . '/README.md'
                    )) . '</p>'
                    : sprintf(
                        '<p><a href="%s" target="_blank" rel="noopener">%s</a></p>',
                        esc_url($url),
                        esc_html__('How to install the joinblock extension', 'joinblock')
                    )
            );
        }

        /**
         * @param array<string, array<string, mixed>> $info
         * @return array<string, array<string, mixed>>
         */
        public static function addSection(array $info): array
        {
            $status = joinblock_status();
            $notSet = __('(not set)', 'joinblock');
            $fields = [
                'implementation' => [
                    'label' => __('Implementation', 'joinblock'),
                    'value' => $status['implementation'] === 'extension'
                        ? __('PHP extension', 'joinblock')
                        : __('plain-PHP polyfill (the extension is not loaded)', 'joinblock'),
                    'debug' => $status['implementation'],
                ],
                'version' => ['label' => __('Version', 'joinblock'), 'value' => $status['version']],
                'lock_backend' => ['label' => __('Lock backend', 'joinblock'), 'value' => $status['lock_backend'] ?? $notSet],
                'lock_dir' => ['label' => __('Lock directory', 'joinblock'), 'value' => $status['lock_dir'] ?? $notSet],
                'mysql_server' => [
                    'label' => __('MySQL server for locks', 'joinblock'),
                    'value' => $status['mysql_server'] ?? $notSet,
                ],
                'action_network_url' => ['label' => __('Action Network URL', 'joinblock'), 'value' => $status['action_network_url']],
                // Null while the site-wide store cannot serve; the problem is listed above.
                'shared_state' => [
                    'label' => __('Tag check pace and tag map', 'joinblock'),
                    'value' => $status['shared_state'] ?? __('this host\'s files (the site-wide store cannot serve: see the problems above)', 'joinblock'),
                ],
            ];
            $counters = [
                'locks_acquired' => __('Locks acquired (this PHP process)', 'joinblock'),
                'locks_waited' => __('Locks that waited (this PHP process)', 'joinblock'),
                'lock_timeouts' => __('Lock timeouts (this PHP process)', 'joinblock'),
                'action_network_requests' => __('Action Network requests (this PHP process)', 'joinblock'),
            ];
            foreach ($counters as $name => $label) {
                $fields[$name] = [
                    'label' => $label,
                    'value' => $status['counters'] === null
                        ? __('not kept by the polyfill, which keeps nothing beyond one request', 'joinblock')
                        : (string) $status['counters'][$name],
                    'debug' => $status['counters'] === null ? 'n/a' : (string) $status['counters'][$name],
                ];
            }
            foreach ($status['problems'] as $setting => $problem) {
                /* translators: %s: a setting's name */
                $fields["problem_$setting"] = ['label' => sprintf(__('Problem with %s', 'joinblock'), $setting), 'value' => $problem];
            }
            $info[self::TEST] = [
                'label' => __('joinblock', 'joinblock'),
                'description' => __('The member lock and Action Network tag check used by the Join Flow plugin.', 'joinblock'),
                'fields' => $fields,
            ];
            return $info;
        }

        /**
         * What keeps locks from working here, as sentences.
         *
         * @param array<string, mixed> $status
         * @return list<string>
         */
        private static function problems(array $status): array
        {
            $problems = array_values($status['problems']);
            if ($status['lock_backend'] === 'file') {
                // The integration guide passes no directory: the setting in effect is the one.
                foreach (array_filter([$status['lock_dir']]) as $dir) {
                    $dir = rtrim($dir, '/') === '' ? '/' : rtrim($dir, '/');
                    if (!is_dir($dir)) {
                        /* translators: %s: a directory */
                        $problems[] = sprintf(__('The lock directory %s does not exist.', 'joinblock'), $dir);
                    } elseif (!wp_is_writable($dir)) {
                        /* translators: %s: a directory */
                        $problems[] = sprintf(__('PHP cannot write to the lock directory %s.', 'joinblock'), $dir);
                    }
                }
            } elseif ($status['lock_backend'] === 'mysql' && !isset($status['problems']['mysql_server'])) {
                // Says why when no server is configured, or it is unreachable, refuses the
                // credentials, or is a Galera node or a read-only replica.
                try {
                    joinblock_acquire_lock(self::PROBE_KEY, ['timeout' => 0])->release();
                } catch (\JoinBlock\LockTimeoutException) {
                    // Another admin's check holds the probe: the server answered.
                } catch (\JoinBlock\LockException $e) {
                    /* translators: %s: why, in the server's or the system's words (never the password) */
                    $problems[] = sprintf(__('The MySQL lock server cannot be used: %s', 'joinblock'), $e->getMessage());
                }
            }
            return $problems;
        }

        /** @return array<string, mixed> */
        private static function result(string $status, string $label, string $description, string $color, string $actions = ''): array
        {
            return [
                'label' => $label,
                'status' => $status,
                'badge' => ['label' => __('Join Flow', 'joinblock'), 'color' => $color],
                'description' => $description,
                'actions' => $actions,
                'test' => self::TEST,
            ];
        }
    }

    SiteHealth::register();
}
