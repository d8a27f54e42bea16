<?php

// Part of the polyfill, loaded by php/joinblock.php only where the extension is not:
// The API's functions.

declare(strict_types=1);

use JoinBlock\ActionNetworkException;
use JoinBlock\Lock;
use JoinBlock\LockException;
use JoinBlock\Polyfill\Api;
use JoinBlock\Polyfill\Locking;
use JoinBlock\Polyfill\Options;
use JoinBlock\Polyfill\Os;
use JoinBlock\Polyfill\Settings;
use JoinBlock\Polyfill\SiteState;
use JoinBlock\Polyfill\TagCheck;

function joinblock_acquire_lock(string $key, array $options = []): Lock
{
    try {
        return Locking::acquire($key, $options);
    } catch (LockException | \ValueError | \TypeError $e) {
        throw Api::raised($e, __FUNCTION__);
    }
}

function joinblock_release_lock(?Lock $lock = null): void
{
    try {
        $lock?->release();
    } catch (LockException $e) {
        throw Api::raised($e, __FUNCTION__);
    }
}

// The lock keeps its own calls' warnings from the caller's error handler where it makes them
// (Os::kept()); the other functions keep them for the whole call, since their file and state
// calls are spread through it: a state file not made yet is no error of the caller's.

function joinblock_configure(array $settings): void
{
    Os::kept();
    try {
        Locking::configure($settings);
    } catch (\ValueError | \TypeError $e) {
        throw Api::raised($e, __FUNCTION__);
    } finally {
        Os::unkept();
    }
}

function joinblock_person_has_tag(string $email, string $tag, string $apiKey, array $options = []): ?bool
{
    Os::kept();
    try {
        return TagCheck::run($email, $tag, $apiKey, $options);
    } catch (ActionNetworkException | \ValueError | \TypeError $e) {
        throw Api::raised($e, __FUNCTION__);
    } finally {
        Os::unkept();
    }
}

function joinblock_status(): array
{
    Os::kept();
    try {
        $lock = Locking::status();
        [$shared, $problem] = SiteState::status();
    } finally {
        Os::unkept();
    }
    return [
        'implementation' => 'polyfill',
        'version' => Api::VERSION,
        'thread_safety' => PHP_ZTS ? 'ZTS' : 'NTS',
        'lock_backend' => $lock['lock_backend'],
        'lock_dir' => $lock['lock_dir'],
        'mysql_server' => $lock['mysql_server'],
        'action_network_url' => Options::ini('joinblock.action_network_url') ?? Settings::DEFAULT_BASE_URL,
        // Nothing outlives a request here: there are no process counters to show.
        'shared_state' => $shared,
        'counters' => null,
        'problems' => $lock['problems'] + ($problem === null ? [] : ['shared_state' => $problem]),
    ];
}
